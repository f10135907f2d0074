"""Summarize py-spy collapsed stacks (``--format raw``): share of samples per function
(inclusive, by the innermost frames of interest) so a profile reads as a short table.

    python bench/stacks.py PROFILE.txt [--top 30] [--self] [--thread MainThread]

``--thread`` keeps the samples of the threads whose name contains it (runproxy's event loop
is its MainThread; the routing thread, the log listener and the executor are the others).
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
    parser.add_argument("--thread", help="only the threads whose name contains this (e.g. MainThread)")
    args = parser.parse_args()
    total = 0
    counts: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in args.profile.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        fs = frames(stack)
        # py-spy --subprocesses --threads: "process N:...;thread (N): Name;..."
        while fs and fs[0].startswith("process "):
            fs = fs[1:]
        thread = fs[0] if fs and fs[0].startswith("thread") else "?"
        if args.thread and args.thread not in thread:
            continue
        threads[thread] += k
        total += k
        if args.self:
            counts[fs[-1]] += k
        else:
            for f in set(fs):
                counts[f] += k
    print(f"{total} samples" + "".join(f"; {100 * k / total:.0f}% {t}" for t, k in threads.most_common(4)))
    for name, k in counts.most_common(args.top):
        print(f"{100 * k / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
