"""The study ledger's adoption benchmark (docs/ledger.md, docs/performance.md): ``manage.py adopt``
of 100,000 studies from simulated C-FIND backends into a fresh SQLite and a fresh PostgreSQL
database, in studies per second (goal: 5,000/s).

Three simulated backends (``runbackend``, discard mode) are filled without C-STORE through
``POST /api/instances``: the studies are spread over them, StudyDates over 20 years, a few
undated, and some split over two backends (three instances on one, one on another). Each
database gets the pool (``loadconfig``) and then ``manage.py adopt --pool main`` is timed from
start to summary: the C-FIND walk of every backend (answers validated), the batched claims,
and the instance-level verification of the studies found on two backends. The adopt summary
is checked against what was filled (every study found and bound, the split ones split).

    .venv/bin/python -m bench.adopt                       # 100,000 studies, SQLite and PostgreSQL
    .venv/bin/python -m bench.adopt --quick               # 20,000 studies
    .venv/bin/python -m bench.adopt --find-limit 10000    # backends that cap a C-FIND at 10,000
    .venv/bin/python -m bench.adopt --profile             # py-spy record adopt (collapsed stacks)

PostgreSQL: a database of its own is created and dropped on SYNTHIQ_BENCH_PG (default
postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.run import bench_env
from routing.simulators.processes import ROOT, Managed, free_port

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
PG_ADMIN_URL = os.environ.get("SYNTHIQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
UID_ROOT = "1.2.826.0.1.3680043.10.543.7"
FIRST_DAY = dt.date(2006, 1, 1)
DAYS = 20 * 365
SEED_CHUNK = 20_000
GOAL = 5000.0


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def post_json(url: str, body: Any, timeout: float = 120) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def plan(studies: int, split_every: int, undated_every: int, backends: int, seed: int = 19) -> dict[str, Any]:
    """Which backend holds what: {backend index: [rows]}, and the expected figures."""
    rng = random.Random(seed)
    rows: list[list[dict[str, str]]] = [[] for _ in range(backends)]
    split = undated = 0
    for n in range(studies):
        study = f"{UID_ROOT}.{n + 1}"
        # Undated ones are not the split ones (those are dated, as most are).
        date = "" if undated_every and n % undated_every == undated_every // 2 else \
            (FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))).strftime("%Y%m%d")
        undated += not date
        home = n % backends
        base = {"StudyInstanceUID": study, "StudyDate": date, "PatientID": f"P{n % 40000}",
                "SeriesInstanceUID": f"{study}.1", "Modality": "CT"}
        if split_every and n % split_every == split_every - 1:
            split += 1
            for i in range(3):
                rows[home].append(base | {"SOPInstanceUID": f"{study}.1.{i + 1}"})
            rows[(home + 1) % backends].append(base | {"SOPInstanceUID": f"{study}.1.4"})
        else:
            rows[home].append(base | {"SOPInstanceUID": f"{study}.1.1"})
    return {"rows": rows, "studies": studies, "split": split, "undated": undated}


class AdoptBench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="synthiq-bench-adopt-"))
        self.env = bench_env(self.tmp, database_url=None)  # a database of its own per run
        self.started: list[Managed] = []
        self.backends: list[dict[str, Any]] = []

    def stop_all(self) -> None:
        for m in reversed(self.started):
            m.stop()
        self.started = []

    def start_backends(self) -> None:
        for letter in "abc":
            port, http_port = free_port(), free_port()
            ae = f"NODE{letter.upper()}"
            argv = [PYTHON, "manage.py", "runbackend", "--ae-title", ae, "--port", str(port),
                    "--http-port", str(http_port), "--find-limit", str(self.args.find_limit)]
            m = Managed(f"backend-{letter}", argv, self.env, self.tmp / "logs" / f"backend-{letter}.log",
                        "runbackend ready")
            self.started.append(m)
            m.start(timeout=60)
            self.backends.append({"Id": f"node-{letter}", "AeTitle": ae, "Host": "127.0.0.1", "Port": port,
                                  "url": f"http://127.0.0.1:{http_port}"})

    def backends_cpu(self) -> float:
        total = 0.0
        for m in self.started:
            if m.proc is not None:
                times = psutil.Process(m.proc.pid).cpu_times()
                total += times.user + times.system
        return total

    def fill(self, layout: dict[str, Any]) -> float:
        started = time.monotonic()
        for backend, rows in zip(self.backends, layout["rows"], strict=True):
            for start in range(0, len(rows), SEED_CHUNK):
                post_json(f"{backend['url']}/api/instances", rows[start:start + SEED_CHUNK])
        return time.monotonic() - started

    def write_config(self) -> Path:
        config = {
            "HeartbeatTimeoutSeconds": 86400,
            "Reconciliation": {"MaxQueriesPerSecond": self.args.qps, "Concurrency": self.args.concurrency},
            "Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": free_port(),
                       "Backends": [{k: v for k, v in b.items() if k != "url"} for b in self.backends]}],
        }
        path = self.tmp / "synthiq.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def adopt(self, database_url: str, config: Path, layout: dict[str, Any], label: str) -> dict[str, Any]:
        env = self.env | {"DATABASE_URL": database_url}
        subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        subprocess.run([PYTHON, "manage.py", "loadconfig", str(config)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        argv = [PYTHON, "manage.py", "adopt", "--pool", "main"]
        profile = None
        if self.args.profile:
            profile = self.tmp / f"adopt-{label}.txt"
            argv = [str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--rate", "200", "--format", "raw",
                    "-o", str(profile), "--", *argv]
        log(f"adopt into {label}")
        backends_before = self.backends_cpu()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        adopt_cpu = children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
        backends_cpu = self.backends_cpu() - backends_before
        if proc.returncode:
            raise RuntimeError(f"adopt into {label} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-2000:]}")
        summary = proc.stdout
        found = _figure(r"studies found: (\d+)", summary)
        bound = _figure(r"bound: (\d+)", summary)
        split = _figure(r"\((\d+) split\)", summary)
        windows = _figure(r"windows done: (\d+)", summary)
        # A capped undated query cannot find every undated study (adopt says so: a CSV adopts them).
        undated_capped = "the undated query was capped" in summary
        expected = layout["studies"] - (layout["undated"] if undated_capped else 0)
        result = {"database": label, "wall_s": round(wall, 2), "studies_found": found, "bound": bound,
                  "split": split, "windows": windows,
                  "studies_per_s": round(found / wall, 1) if wall else 0.0,
                  "adopt_cpu_s": round(adopt_cpu, 2), "backends_cpu_s": round(backends_cpu, 2),
                  "adopt_cpu_us_per_study": round(1e6 * adopt_cpu / found, 1) if found > 0 else None,
                  "backends_cpu_us_per_study": round(1e6 * backends_cpu / found, 1) if found > 0 else None,
                  "undated_capped": undated_capped,
                  "complete": found >= expected and bound == found and split == layout["split"]}
        if profile is not None:
            result["profile"] = str(profile)
        log(f"{label}: {found} studies in {wall:.2f} s = {result['studies_per_s']:.0f} studies/s "
            f"({bound} bound, {split} split, {windows} windows){'' if result['complete'] else ' INCOMPLETE'}; "
            f"CPU: adopt {adopt_cpu:.1f} s, backends {backends_cpu:.1f} s")
        if not result["complete"]:
            log(f"adopt summary:\n{summary}")
        return result

    def run(self) -> dict[str, Any]:
        studies = self.args.studies or (20_000 if self.args.quick else 100_000)
        layout = plan(studies, self.args.split_every, self.args.undated_every, 3)
        self.start_backends()
        fill_s = self.fill(layout)
        log(f"filled 3 backends with {studies} studies ({layout['split']} split over two, {layout['undated']} "
            f"undated) in {fill_s:.1f} s")
        config = self.write_config()
        results = [self.adopt(f"sqlite:///{self.tmp / 'adopt.sqlite3'}", config, layout, "sqlite")]
        name = f"synthiq_bench_adopt_{uuid.uuid4().hex[:10]}"
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except Exception as exc:
            log(f"PostgreSQL not available at {PG_ADMIN_URL}: {exc}")
            results.append({"database": "postgresql", "error": str(exc)})
        else:
            try:
                results.append(self.adopt(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", config, layout, "postgresql"))
            finally:
                with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return {"when_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "studies": studies,
                "split": layout["split"], "undated": layout["undated"], "find_limit": self.args.find_limit,
                "max_queries_per_second": self.args.qps, "concurrency": self.args.concurrency,
                "goal_studies_per_s": GOAL, "results": results}


def _figure(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else -1


def table(result: dict[str, Any]) -> str:
    capped = [r["database"] for r in result["results"] if r.get("undated_capped")]
    lines = [f"adopt {result['studies']:,} studies ({result['split']} split over two backends, {result['undated']} "
             f"undated) from 3 simulated backends (find limit {result['find_limit'] or 'none'}); "
             f"goal {GOAL:,.0f} studies/s",
             "| database | wall s | studies/s | windows | bound | split | complete | adopt CPU µs/study | "
             "backends CPU µs/study |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        if "error" in r:
            lines.append(f"| {r['database']} | – | not run: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['database']} | {r['wall_s']:.2f} | {r['studies_per_s']:,.0f} | {r['windows']} | "
                     f"{r['bound']} | {r['split']} | {'yes' if r['complete'] else 'NO'} | "
                     f"{r['adopt_cpu_us_per_study']} | {r['backends_cpu_us_per_study']} |")
    if capped:
        lines.append(f"the undated query was capped ({', '.join(capped)}): undated studies beyond the cap are not "
                     "expected to be found (adopt reports it; a CSV export adopts them)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 studies")
    parser.add_argument("--studies", type=int, help="studies to adopt (default 100,000)")
    parser.add_argument("--split-every", type=int, default=1000, help="one study in N is split over two backends")
    parser.add_argument("--undated-every", type=int, default=500, help="one study in N has no StudyDate")
    parser.add_argument("--find-limit", type=int, default=0, help="the backends' C-FIND result cap (0: none)")
    parser.add_argument("--qps", type=float, default=5, help="Reconciliation.MaxQueriesPerSecond")
    parser.add_argument("--concurrency", type=int, default=2, help="Reconciliation.Concurrency")
    parser.add_argument("--profile", action="store_true", help="py-spy record each adopt (kept in the tmp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adopt.json")
    args = parser.parse_args(argv)
    bench = AdoptBench(args)
    try:
        result = bench.run()
    finally:
        bench.stop_all()
        if args.profile:
            log(f"work dir kept (profiles): {bench.tmp}")
        else:
            shutil.rmtree(bench.tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
