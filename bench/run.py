"""The performance benchmarks (docs/performance.md): W1-W5 through three paths side by side in one run.

Paths: direct to one simulated backend, HAProxy (TCP mode, round-robin over the three
backends) and SynthIQ (runproxy) over the same three backends, all in discard mode.
Senders are DCMTK's storescu (``loadtest --sender storescu``): with TCP_NODELAY=1 in its
environment for W1-W4 (the fair ceiling), with its default sockets (Nagle on, as most
modality stacks ship) for W5. Each (workload, path) runs ``--runs`` times, interleaved so
that the three paths see the same machine load; the table shows medians and the ratios
to HAProxy and to direct. Then the routing-decision latency and the binding-claim rate
are measured on SQLite and PostgreSQL (bench/dbbench.py).

Run from the repository root, as a module of the ``bench`` package:

    make bench                       # full run
    make bench BENCH_ARGS=--quick    # small sizes, one run each: a sanity check
    .venv/bin/python -m bench.run --quick --workloads W1 W4
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from routing.simulators.processes import ROOT, Managed, free_port, port_open, wait_for

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
PG_ADMIN_URL = os.environ.get("SYNTHIQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PATHS = ("direct", "haproxy", "synthiq")
# --verify: SynthIQ again, side by side, with the study ledger's background verifier judging
# each study a second after it goes quiet (Reconciliation.QuietSeconds 1).
VERIFY_PATH = "synthiq+verify"
VERIFY_QUIET_SECONDS = 1
VERIFY_CATCH_UP_SECONDS = 60


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    studies: int
    instances: int
    rows: int
    columns: int
    associations: int
    split: int
    big_bytes: int = 0  # one streamed instance of this many pixel bytes instead
    nagle: bool = False  # senders keep their default sockets (no TCP_NODELAY)
    data: str = ""  # share another workload's generated files

    def describe(self) -> str:
        sockets = ", senders' default sockets (Nagle on)" if self.nagle else ""
        if self.big_bytes:
            return f"1 instance of {self.big_bytes / 2**20:.0f} MiB{sockets}"
        size = self.rows * self.columns * 2
        return (
            f"{self.studies}x{self.instances} instances of {size / 1000:.0f} kB pixels, "
            f"{self.associations} senders, split {self.split}{sockets}"
        )


FULL = [
    Workload("W1", "one CT", 1, 500, 512, 512, 1, 1),
    Workload("W2", "busy morning", 32, 100, 512, 512, 8, 2),
    Workload("W3", "tomo", 1, 1, 0, 0, 1, 1, big_bytes=1 << 30),
    Workload("W4", "small objects", 4, 1250, 44, 44, 4, 1),
    Workload("W5", "Nagle-bound modalities", 4, 1250, 44, 44, 4, 1, nagle=True, data="W4"),
]
QUICK = [
    Workload("W1", "one CT", 1, 100, 512, 512, 1, 1),
    Workload("W2", "busy morning", 16, 20, 512, 512, 8, 2),
    Workload("W3", "tomo", 1, 1, 0, 0, 1, 1, big_bytes=128 << 20),
    Workload("W4", "small objects", 4, 250, 44, 44, 4, 1),
    Workload("W5", "Nagle-bound modalities", 4, 100, 44, 44, 4, 1, nagle=True),
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------


def generate(workload: Workload, directory: Path) -> None:
    from bench.bigfile import write_large_instance
    from routing.simulators.synthetic import write_study

    if (directory / ".complete").exists():
        return
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    if workload.big_bytes:
        write_large_instance(directory / "big.dcm", pixel_bytes=workload.big_bytes)
    else:
        for n in range(workload.studies):
            write_study(
                directory / f"study{n:04d}",
                count=workload.instances,
                rows=workload.rows,
                columns=workload.columns,
                patient_id=f"BENCH{n:04d}",
            )
    (directory / ".complete").touch()


# -- processes -------------------------------------------------------------------------


def wait_port(port: int, timeout: float = 30) -> None:
    wait_for(lambda: port_open(port), timeout=timeout, what=f"port {port}")


def runproxy_processes(managed: Managed) -> list[psutil.Process]:
    """runproxy and its workers."""
    assert managed.proc is not None
    try:
        parent = psutil.Process(managed.proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def peak_rss_mb(process: psutil.Process) -> float:
    """Peak RSS (VmHWM: psutil reports only the current RSS)."""
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_figures(managed: Managed) -> dict[str, float]:
    """Peak RSS of the largest runproxy process, the sum of their PSS now (workers share
    pages with the parent; PSS counts each shared page once across them), and the CPU
    seconds they used so far."""
    processes = runproxy_processes(managed)
    pss = cpu = 0.0
    for process in processes:
        try:
            pss += process.memory_full_info().pss / 2**20
            times = process.cpu_times()
            cpu += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return {"peak_rss_mb": max((peak_rss_mb(p) for p in processes), default=0.0), "pss_sum_mb": pss,
            "cpu_s": cpu, "processes": len(processes)}


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(args.tmp_dir or tempfile.mkdtemp(prefix="synthiq-bench-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = os.environ | {
            "DATABASE_URL": f"sqlite:///{self.tmp / 'bench.sqlite3'}",
            "SYNTHIQ_ALLOW_DEV_KEY": "1",
            "SYNTHIQ_VAR_DIR": str(self.tmp / "var"),
            "DJANGO_SETTINGS_MODULE": "synthiq_project.settings",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("CELERY_BROKER_URL", None)
        self.env.pop("SYNTHIQ_CONFIG", None)
        self.started: list[Managed] = []
        self.backends: list[dict[str, Any]] = []

    def managed(self, name: str, argv: list[str], ready: str | None) -> Managed:
        m = Managed(name, argv, self.env, self.tmp / "logs" / f"{name}.log", ready)
        self.started.append(m)
        return m.start(timeout=60)

    def stop_all(self) -> None:
        for m in reversed(self.started):
            m.stop()
        self.started = []

    # -- set-up -----------------------------------------------------------------------
    def setup(self) -> None:
        subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True)
        for letter in "abc":
            port, http_port = free_port(), free_port()
            ae = f"NODE{letter.upper()}"
            self.managed(
                f"backend-{letter}",
                [
                    PYTHON,
                    "manage.py",
                    "runbackend",
                    "--ae-title",
                    ae,
                    "--port",
                    str(port),
                    "--http-port",
                    str(http_port),
                ],
                "runbackend ready",
            )
            self.backends.append(
                {
                    "Id": f"node-{letter}",
                    "AeTitle": ae,
                    "Host": "127.0.0.1",
                    "Port": port,
                    "Health": {"Mode": "native", "Url": f"http://127.0.0.1:{http_port}/api/health"},
                    "url": f"http://127.0.0.1:{http_port}",
                }
            )
        self.start_haproxy()
        self.proxy_port = free_port()
        config = {
            "HeartbeatIntervalSeconds": 5,
            # No heartbeat runs in the bench: the health rows written below stay valid.
            "HeartbeatTimeoutSeconds": 86400,
            "Network": {"MaxPduBytes": self.args.max_pdu},
            "Pools": [
                {
                    "Id": "main",
                    "AeTitle": "SYNTHIQ",
                    "Host": "127.0.0.1",
                    "Port": self.proxy_port,
                    "Backends": [{k: v for k, v in b.items() if k != "url"} for b in self.backends],
                }
            ],
        }
        if self.args.audit_udp:  # audit on: the same run compared with one without it (W4 side by side)
            host, _, port = self.args.audit_udp.rpartition(":")
            config["Audit"] = {"Host": host, "Port": int(port), "Transport": "udp"}
        self.proxy_config = self.tmp / "synthiq.json"
        self.proxy_config.write_text(json.dumps(config, indent=2))
        self.verify_config = self.tmp / "synthiq-verify.json"
        self.verify_config.write_text(json.dumps(config | {"Reconciliation": {"QuietSeconds": VERIFY_QUIET_SECONDS}},
                                                 indent=2))
        # Load the config (runproxy syncs it too) and mark the backends healthy, as a
        # heartbeat round would, so SynthIQ balances new studies by load.
        subprocess.run([PYTHON, "-c", _HEALTHY_SCRIPT, str(self.proxy_config)], cwd=ROOT, env=self.env, check=True)

    def start_haproxy(self) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.haproxy_port = free_port()
        servers = "\n".join(f"    server {b['Id']} 127.0.0.1:{b['Port']}" for b in self.backends)
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend dicom
    bind 127.0.0.1:{self.haproxy_port}
    default_backend pacs
backend pacs
    balance roundrobin
{servers}
""")
        subprocess.run([exe, "-c", "-q", "-f", str(cfg)], check=True)
        self.managed("haproxy", [exe, "-db", "-f", str(cfg)], None)
        wait_port(self.haproxy_port)
        self.haproxy_version = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.splitlines()[0]

    def start_synthiq(self, run_id: str, *, verify: bool = False) -> Managed:
        subprocess.run([PYTHON, "-c", _RESET_SCRIPT], cwd=ROOT, env=self.env, check=True)
        config = self.verify_config if verify else self.proxy_config
        argv = [PYTHON, "manage.py", "runproxy", "--config", str(config), "--no-http"]
        if self.args.workers > 1:
            argv += ["--workers", str(self.args.workers)]
        return self.managed(f"runproxy-{run_id}", argv, "runproxy ready")

    def start_profiler(self, proxy: Managed, run_id: str) -> subprocess.Popen | None:
        """py-spy attached to runproxy, collapsed stacks (flamegraph.pl / speedscope input)."""
        if not self.args.profile:
            return None
        out = self.tmp / "profiles" / f"{run_id}.txt"
        out.parent.mkdir(exist_ok=True)
        assert proxy.proc is not None
        argv = [
            str(ROOT / ".venv" / "bin" / "py-spy"),
            "record",
            "--pid",
            str(proxy.proc.pid),
            "--subprocesses",
            "--rate",
            "250",
            "--format",
            "raw",
            "--threads",
            "-o",
            str(out),
        ]
        if self.args.profile == "idle":
            argv.append("--idle")
        prof = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(1.0)  # let it attach
        return prof

    @staticmethod
    def stop_profiler(prof: subprocess.Popen | None) -> None:
        if prof is not None:
            prof.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                prof.wait(timeout=60)
            except subprocess.TimeoutExpired:
                prof.kill()

    # -- one measurement --------------------------------------------------------------
    def load(self, workload: Workload, data: Path, port: int, called_ae: str, out: Path) -> dict[str, Any]:
        argv = [
            PYTHON,
            "manage.py",
            "loadtest",
            "--port",
            str(port),
            "--called-ae",
            called_ae,
            "--folder",
            str(data),
            "--associations",
            str(workload.associations),
            "--split",
            str(workload.split),
            "--reset-holdings",
            "--json",
            str(out),
            "--no-progress",
            "--sender",
            "storescu",
        ]
        if workload.nagle:
            argv.append("--nagle")
        for b in self.backends:
            argv += ["--backend-url", b["url"]]
        proc = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True)
        if not out.exists():
            raise RuntimeError(f"loadtest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        result = json.loads(out.read_text())
        # storescu reports per association, not per instance: what the backends hold decides.
        result["failed"] = max(result["failed"], result["instances"] - result.get("instances_held", 0))
        if proc.returncode:
            log(f"loadtest reported failures: {proc.stderr.strip()[-400:]}")
        return result

    def measure(self, workload: Workload, path: str, run: int, data: Path) -> dict[str, Any]:
        out = self.tmp / "results" / f"{workload.name}-{path}-{run}.json"
        out.parent.mkdir(exist_ok=True)
        if path == "direct":
            result = self.load(workload, data, self.backends[0]["Port"], "NODEA", out)
        elif path == "haproxy":
            result = self.load(workload, data, self.haproxy_port, "SYNTHIQ", out)
        else:
            verify = path == VERIFY_PATH
            proxy = self.start_synthiq(f"{workload.name}-{run}{'-verify' if verify else ''}", verify=verify)
            prof = self.start_profiler(proxy, f"{workload.name}-{run}")
            try:
                idle = process_figures(proxy)["cpu_s"]
                result = self.load(workload, data, self.proxy_port, "SYNTHIQ", out)
                result |= process_figures(proxy)
                result["cpu_s"] -= idle  # what the workload cost, not the start-up
                if verify:
                    result |= self.verification(workload.studies)
            finally:
                self.stop_profiler(prof)
                proxy.stop()
                self.started.remove(proxy)
        if "verified_at_end" in result:
            log(f"{workload.name} {path} run {run}: verified {result['verified_at_end']}/{workload.studies} studies "
                f"when the load ended, {result['verified']} within {result['verify_catch_up_s']:.1f} s after it; "
                f"verdicts {result['verdicts']}")
        log(
            f"{workload.name} {path:8s} run {run}: {result['wall_s']:.2f} s, "
            f"{result['instances_per_s']:.1f} inst/s, {result['mb_per_s']:.1f} MB/s, failed {result['failed']}, "
            f"split {result.get('studies_split')}"
            + (f", peak RSS {result['peak_rss_mb']:.0f} MB, PSS {result['pss_sum_mb']:.0f} MB over "
               f"{result['processes']} process(es), CPU {result['cpu_s']:.2f} s" if "peak_rss_mb" in result else "")
        )
        return result

    def verification(self, studies: int) -> dict[str, Any]:
        """What the background verifier judged by the end of the load, and how long after it
        every study had a verdict (or VERIFY_CATCH_UP_SECONDS, if not)."""
        def verdicts() -> dict[str, int]:
            out = subprocess.run([PYTHON, "-c", _VERDICTS_SCRIPT], cwd=ROOT, env=self.env, check=True,
                                 capture_output=True, text=True).stdout
            return json.loads(out)

        started = time.monotonic()
        at_end = verdicts()
        now = at_end
        while sum(n for v, n in now.items() if v != "unverified") < studies and \
                time.monotonic() - started < VERIFY_CATCH_UP_SECONDS:
            time.sleep(0.5)
            now = verdicts()
        verified_at_end = sum(n for v, n in at_end.items() if v != "unverified")
        return {"verified_at_end": verified_at_end, "verified": sum(n for v, n in now.items() if v != "unverified"),
                # 0: every study had its verdict when the load ended (the first count is not waited for).
                "verify_catch_up_s": 0.0 if verified_at_end >= studies else time.monotonic() - started,
                "verdicts": now}

    # -- the whole run ----------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        workloads = [
            w for w in (QUICK if self.args.quick else FULL) if not self.args.workloads or w.name in self.args.workloads
        ]
        paths = [p for p in PATHS if not self.args.paths or p in self.args.paths]
        verify = set(self.args.verify or ["W2"]) if self.args.verify is not None else set()
        if verify:
            paths.append(VERIFY_PATH)
        data = {}
        for w in workloads:
            data[w.name] = self.tmp / "data" / ("quick-" if self.args.quick else "") / (w.data or w.name)
            log(f"generating {w.name} ({w.describe()}) in {data[w.name]}")
            generate(w, data[w.name])
        self.setup()
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {w.name: {p: [] for p in paths} for w in workloads}
        for run in range(1, self.args.runs + 1):
            for w in workloads:
                for p in paths:
                    if p != VERIFY_PATH or w.name in verify:
                        raw[w.name][p].append(self.measure(w, p, run, data[w.name]))
        rows = summarize(workloads, paths, raw)
        db = {} if self.args.no_db else self.db_benchmarks()
        return {
            "when_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "haproxy": getattr(self, "haproxy_version", None),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "workloads": {w.name: {"title": w.title, "shape": w.describe()} for w in workloads},
            "rows": rows,
            "db": db,
            "raw": raw,
        }

    def db_benchmarks(self) -> dict[str, Any]:
        # As settings configure the connection (persistent: CONN_MAX_AGE, default 600 s).
        out: dict[str, Any] = {}
        out["sqlite"] = self.dbbench(f"sqlite:///{self.tmp / 'dbbench.sqlite3'}")
        name = f"synthiq_bench_{uuid.uuid4().hex[:10]}"
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except Exception as exc:
            log(f"PostgreSQL not available at {PG_ADMIN_URL}: {exc}")
            out["postgresql"] = {"error": str(exc)}
            return out
        try:
            pg_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
            out["postgresql"] = self.dbbench(pg_url)
        finally:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return out

    def dbbench(self, url: str) -> dict[str, Any]:
        out = self.tmp / f"dbbench-{uuid.uuid4().hex[:8]}.json"
        env = self.env | {"DATABASE_URL": url}
        argv = [PYTHON, "-m", "bench.dbbench", "--json", str(out)]
        if self.args.quick:
            argv.append("--quick")
        log(f"database benchmarks on {url.split(':')[0]}")
        subprocess.run(argv, cwd=ROOT, env=env, check=True)
        return json.loads(out.read_text())


_HEALTHY_SCRIPT = """
import datetime as dt, sys, django
django.setup()
from pools.config import config_load
from pools.services import config_sync
from health.models import BackendHealth
config = config_load(path=sys.argv[1])
config_sync(config=config)
now = dt.datetime.now(dt.UTC)
for pool in config.pools:
    for b in pool.backends:
        BackendHealth.objects.update_or_create(backend_id=b.id, defaults={
            "healthy": True, "load": 0.0, "capacity": 50, "last_ok_utc": now, "last_check_utc": now})
"""

# The study ledger's verdicts of the bindings of this run: {verdict: bindings}.
_VERDICTS_SCRIPT = """
import json, django
django.setup()
from django.db.models import Count
from affinity.models import Binding
print(json.dumps(dict(Binding.objects.values_list("verdict").annotate(n=Count("id")))))
"""

# Every run starts cold: no bindings, so every study takes the full routing path.
_RESET_SCRIPT = """
import django
django.setup()
from affinity.models import Binding
Binding.objects.all().delete()
"""


def summarize(workloads: list[Workload], paths: list[str], raw) -> list[dict[str, Any]]:
    rows = []
    for w in workloads:
        ha = raw[w.name].get("haproxy")
        ha_wall = statistics.median(r["wall_s"] for r in ha) if ha else None
        direct = raw[w.name].get("direct")
        direct_wall = statistics.median(r["wall_s"] for r in direct) if direct else None
        for p in paths:
            runs = raw[w.name][p]
            if not runs:  # the verifier's path runs only the workloads --verify names
                continue
            walls = [r["wall_s"] for r in runs]
            wall = statistics.median(walls)
            mid = min(runs, key=lambda r: abs(r["wall_s"] - wall))
            rows.append(
                {
                    "workload": w.name,
                    "path": p,
                    "wall_s": wall,
                    "walls": walls,
                    "instances": mid["instances"],
                    "instances_per_s": mid["instances"] / wall,
                    "mb_per_s": mid["bytes"] / wall / 1e6,
                    "latency_ms": mid["latency_ms"],
                    "ratio_to_haproxy": wall / ha_wall if ha_wall else None,
                    "ratio_to_direct": wall / direct_wall if direct_wall else None,
                    "peak_rss_mb": max((r["peak_rss_mb"] for r in runs if "peak_rss_mb" in r), default=None),
                    "pss_sum_mb": max((r["pss_sum_mb"] for r in runs if "pss_sum_mb" in r), default=None),
                    "studies_split": max((r.get("studies_split") or 0) for r in runs),
                    "studies": mid["studies"],
                    "failed": sum(r["failed"] for r in runs),
                }
            )
            if "verified" in mid:
                rows[-1] |= {k: mid[k] for k in ("verified_at_end", "verified", "verify_catch_up_s", "verdicts")}
    return rows


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = vm_line("/proc/meminfo", "MemTotal")
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": os.getloadavg(),
    }


def vm_line(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def table(result: dict[str, Any]) -> str:
    head = ("workload", "path", "wall s", "inst/s", "MB/s", "x HAProxy", "x direct", "peak RSS MB", "PSS sum MB",
            "split", "failed")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in result["rows"]:
        lines.append(
            " | ".join(
                [
                    r["workload"],
                    r["path"],
                    f"{r['wall_s']:.2f}",
                    f"{r['instances_per_s']:.1f}",
                    f"{r['mb_per_s']:.1f}",
                    f"{r['ratio_to_haproxy']:.2f}" if r["ratio_to_haproxy"] else "-",
                    f"{r['ratio_to_direct']:.2f}" if r["ratio_to_direct"] else "-",
                    f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "-",
                    f"{r['pss_sum_mb']:.0f}" if r["pss_sum_mb"] is not None else "-",
                    f"{r['studies_split']}/{r['studies']}",
                    str(r["failed"]),
                ]
            )
        )
    for r in result["rows"]:
        if "verified" in r:
            lines.append(
                f"\n{r['workload']} {r['path']}: background verifier (QuietSeconds {VERIFY_QUIET_SECONDS}) judged "
                f"{r['verified_at_end']}/{r['studies']} studies by the end of the load and {r['verified']} within "
                f"{r['verify_catch_up_s']:.1f} s after it; verdicts {r['verdicts']}")
    db = result.get("db") or {}
    for kind, d in db.items():
        if "error" in d:
            lines.append(f"\n{kind}: not measured ({d['error']})")
            continue
        lines.append(
            f"\n{kind}: route hit p99 {d['route_hit_us']['p99']:.1f} us (cache lookup p99 "
            f"{d['cache_get_us']['p99']:.1f} us), route miss p99 {d['route_miss_ms']['p99']:.2f} ms; "
            f"binding claims {d['claims_per_s_batched']:.0f}/s sustained ({d['submitters']} associations at once, "
            f"batched), {d['claims_per_s']:.0f}/s one at a time; write-behind touches {d['touches_per_s']:.0f}/s"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and one run: a sanity check")
    parser.add_argument("--runs", type=int, help="runs per (workload, path); default 3 (1 with --quick)")
    parser.add_argument("--workloads", nargs="*", help="e.g. W1 W3 (default: all)")
    parser.add_argument("--paths", nargs="*", choices=PATHS, help="default: all three")
    parser.add_argument("--max-pdu", type=int, default=262144, help="Network.MaxPduBytes of SynthIQ")
    parser.add_argument("--workers", type=int, default=1, help="runproxy --workers")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cpu",
        choices=["cpu", "idle"],
        help="py-spy record runproxy during SynthIQ runs (collapsed stacks in the tmp dir); "
        "'idle' also samples waiting threads",
    )
    parser.add_argument("--audit-udp", metavar="HOST:PORT",
                        help="SynthIQ sends its audit messages over UDP to HOST:PORT (a local rsyslog, say): run "
                             "once with and once without to see what audit costs")
    parser.add_argument("--verify", nargs="*", metavar="W",
                        help=f"also run these workloads (default W2) through SynthIQ with the background verifier "
                             f"active ({VERIFY_PATH}, Reconciliation.QuietSeconds {VERIFY_QUIET_SECONDS}), side by "
                             f"side with the other paths, and report the studies verified")
    parser.add_argument("--no-db", action="store_true", help="skip routing-latency and affinity-write figures")
    parser.add_argument("--tmp-dir", help="work here (generated data is reused between runs)")
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "synthiq_project.settings")
    bench = Bench(args)
    os.environ.update(bench.env)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        result = bench.run()
    finally:
        bench.stop_all()
        if not args.keep_tmp and not args.tmp_dir:
            shutil.rmtree(bench.tmp, ignore_errors=True)
        elif args.profile or args.keep_tmp:
            log(f"work dir kept: {bench.tmp}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    m = result["machine"]
    print(f"\nmachine: {m['nproc']} x {m['cpu']}, {m['ram_gb']} GB RAM; {result['haproxy']}; results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
