"""Summarize py-spy collapsed stacks (``--format raw``): share of samples per function
(inclusive, by the innermost frames of interest) so a profile reads as a short table.

    python bench/stacks.py PROFILE.txt [--top 30] [--self]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path


def frames(stack: str) -> list[str]:
    out = []
    for frame in stack.split(";"):
        frame = re.sub(r"\s*\((?:[^()]*/)?([^/()]+\.py):\d+\)", r" (\1)", frame.strip())
        out.append(frame)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--self", action="store_true", help="self time instead of inclusive")
    args = parser.parse_args()
    total = 0
    counts: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in args.profile.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        total += k
        fs = frames(stack)
        threads[fs[0] if fs and fs[0].startswith(("thread", "process")) else "?"] += k
        if args.self:
            counts[fs[-1]] += k
        else:
            for f in set(fs):
                counts[f] += k
    print(f"{total} samples")
    for name, k in counts.most_common(args.top):
        print(f"{100 * k / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
