"""`make soak`: a steady mixed load through runproxy for a long time, watching for leaks.

Three simulated backends and one runproxy (as `make bench` sets them up); a load loop of
DCMTK storescu senders (small instances over 4 associations, a CT series, a C-ECHO),
studies re-sent now and then (affinity hits) and new ones placed; every 10 s the runproxy
process's RSS, open file descriptors, asyncio tasks and open associations are sampled.
After the warm-up the run fails if any of them grew past its bound — a leak shows as
growth, not as a level.

    make soak                                    # 30 minutes
    .venv/bin/python -m bench.soak --minutes 5   # a shorter look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.run import PYTHON, Bench, generate, log
from bench.run import Workload as Shape
from routing.simulators.processes import ROOT

SMALL = Shape("soak-small", "small objects", 4, 200, 44, 44, 4, 1)
CT = Shape("soak-ct", "a CT series", 1, 40, 512, 512, 1, 1)
# Growth allowed from the first sample after warm-up to the largest one after it.
BOUNDS = {"rss_mb": 40.0, "fds": 40, "tasks": 60, "open_associations": 10}


def sample(pid: int) -> dict[str, float]:
    process = psutil.Process(pid)
    return {"rss_mb": process.memory_info().rss / 2**20, "fds": process.num_fds()}


def published(env: dict[str, str]) -> dict[str, Any]:
    """What runproxy last published (tasks, open associations), read from the database."""
    code = ("import json, django; django.setup()\n"
            "from routing.models import ProxyProcess\n"
            "p = ProxyProcess.objects.filter(stopped=False).order_by('-updated_utc').first()\n"
            "print(json.dumps(p.counters if p else {}))")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout or "{}")


def _port(bench: Bench) -> int:
    """SynthIQ's pool in front of the simulated backends."""
    return int(bench.sets["sim"]["pool_port"])


def _load(bench: Bench, data: dict[str, Path], stop: threading.Event, sent: dict[str, int]) -> None:
    """W4's small objects and W1's CT through SynthIQ, round after round (and a C-ECHO), until ``stop``."""
    echoscu = shutil.which("echoscu")
    while not stop.is_set():
        for w in (SMALL, CT):
            out = bench.tmp / "results" / f"{w.name}.json"
            out.parent.mkdir(exist_ok=True)
            try:
                result = bench.load(w, "sim", data[w.name], _port(bench), "SYNTHIQ", out)
                sent["failed_rounds"] += 1 if result["failed"] else 0
            except Exception as exc:  # report, keep loading
                log(f"load round failed: {exc}")
                sent["failed_rounds"] += 1
            sent["rounds"] += 1
            if stop.is_set():
                return
        if echoscu:
            subprocess.run([echoscu, "-aec", "SYNTHIQ", "127.0.0.1", str(_port(bench))],
                           capture_output=True, timeout=60)


def _watch(bench: Bench, pid: int, *, minutes: float, interval: float) -> list[dict[str, float]]:
    """runproxy's RSS, descriptors, tasks and associations every ``interval`` seconds for ``minutes``."""
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    while time.monotonic() - started < minutes * 60:
        time.sleep(interval)
        snap = published(bench.env)
        row = sample(pid) | {"t_s": round(time.monotonic() - started), "tasks": snap.get("tasks", 0),
                             "open_associations": snap.get("open_associations", 0),
                             "received": (snap.get("counters") or {}).get("received", 0)}
        samples.append(row)
        log(f"t={row['t_s']:5d}s rss={row['rss_mb']:.1f} MB fds={row['fds']} tasks={row['tasks']} "
            f"open={row['open_associations']} received={row['received']}")
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup-minutes", type=float, default=3)
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--tmp-dir")
    args = parser.parse_args()
    bench_args = argparse.Namespace(tmp_dir=args.tmp_dir, max_pdu=262144, workers=1, profile=None, quick=True,
                                    audit_udp=None)
    bench = Bench(bench_args)
    os.environ.update(bench.env)
    samples: list[dict[str, float]] = []
    stop = threading.Event()
    sent = {"rounds": 0, "failed_rounds": 0}
    try:
        data = {w.name: bench.tmp / "data" / w.name for w in (SMALL, CT)}
        for w in (SMALL, CT):
            generate(w, data[w.name])
        bench.setup(["sim"])
        proxy = bench.start_synthiq("soak")
        assert proxy.proc is not None
        pid = proxy.proc.pid
        loader = threading.Thread(target=_load, args=(bench, data, stop, sent), daemon=True)
        loader.start()
        samples = _watch(bench, pid, minutes=args.minutes, interval=args.interval)
        stop.set()
        loader.join(timeout=300)
    finally:
        stop.set()
        bench.stop_all()
        if not args.tmp_dir:
            shutil.rmtree(bench.tmp, ignore_errors=True)
    after = [s for s in samples if s["t_s"] >= args.warmup_minutes * 60]
    growth = {k: (max(s[k] for s in after) - after[0][k]) if after else 0.0 for k in BOUNDS}
    ok = bool(after) and all(growth[k] <= bound for k, bound in BOUNDS.items()) and not sent["failed_rounds"]
    result = {"minutes": args.minutes, "warmup_minutes": args.warmup_minutes, "bounds": BOUNDS, "growth": growth,
              "rounds": sent, "samples": samples, "ok": ok}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"soak {args.minutes:.0f} min: {sent['rounds']} load rounds ({sent['failed_rounds']} with failures); "
          f"growth after {args.warmup_minutes:.0f} min warm-up: "
          + ", ".join(f"{k} {growth[k]:+.1f} (bound {BOUNDS[k]})" for k in BOUNDS)
          + f"; {'OK' if ok else 'FAILED'}; samples in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
