"""The performance benchmarks (docs/performance.md): W1-W5 and the TLS pair through three paths side by side.

Paths: direct to one backend, HAProxy (TCP mode, round-robin over the three backends) and
SynthIQ (runproxy) over the same three backends. Two kinds of backends, three of each:

* ``fast`` (the figure of record): DCMTK ``storescp --fork --ignore -pdu 131072`` with
  TCP_NODELAY=1 in its environment, as a real PACS node ingests: the backend is not the
  bottleneck, so the relay's own cost shows.
* ``sim``: the simulated Python backends (``runbackend``) in discard mode, which count
  what they hold (split studies, lost instances) but are slower than the relay.

The TLS pair (W1-TLS, W4-TLS) runs W1 and W4 with mutual TLS on both sides behind three more
fast backends speaking TLS: storescu with a client certificate, HAProxy terminating and
re-originating TLS, SynthIQ's pool and backend TLS; a throwaway CA is made with openssl.

Senders are DCMTK's storescu (``loadtest --sender storescu``): with TCP_NODELAY=1 in its
environment for W1-W4 (the fair ceiling), with its default sockets (Nagle on, as most
modality stacks ship) for W5. Each (workload, backends, path) runs ``--runs`` times,
interleaved so that the three paths see the same machine load; the table shows medians,
the ratios to HAProxy and to direct, and the CPU-seconds runproxy and HAProxy spent per GB
and per 1,000 instances (utime + stime of their processes before and after each run).
Then the routing-decision latency and the binding-claim rate are measured on SQLite and
PostgreSQL (bench/dbbench.py).

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
# SynthIQ on asyncio's own event loop (runproxy --event-loop asyncio), beside the default
# uvloop when asked for: the two loops measured in one run.
ASYNCIO_PATH = "synthiq-asyncio"
KINDS = ("fast", "sim")
# --verify: SynthIQ again, side by side, with the study ledger's background verifier judging
# each study a second after it goes quiet (Reconciliation.QuietSeconds 1).
VERIFY_PATH = "synthiq+verify"
VERIFY_QUIET_SECONDS = 1
VERIFY_CATCH_UP_SECONDS = 60
STORESCP_MAX_PDU = 131072  # the largest DCMTK accepts (its default is 16384)


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
    tls: bool = False  # mutual TLS on both sides (fast backends only)

    def describe(self) -> str:
        sockets = ", senders' default sockets (Nagle on)" if self.nagle else ""
        sockets += ", mutual TLS both sides" if self.tls else ""
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
    Workload("W1-TLS", "one CT over TLS", 1, 500, 512, 512, 1, 1, data="W1", tls=True),
    Workload("W4-TLS", "small objects over TLS", 4, 1250, 44, 44, 4, 1, data="W4", tls=True),
]
QUICK = [
    Workload("W1", "one CT", 1, 100, 512, 512, 1, 1),
    Workload("W2", "busy morning", 16, 20, 512, 512, 8, 2),
    Workload("W3", "tomo", 1, 1, 0, 0, 1, 1, big_bytes=128 << 20),
    Workload("W4", "small objects", 4, 250, 44, 44, 4, 1),
    Workload("W5", "Nagle-bound modalities", 4, 100, 44, 44, 4, 1, nagle=True),
    Workload("W1-TLS", "one CT over TLS", 1, 100, 512, 512, 1, 1, data="W1", tls=True),
    Workload("W4-TLS", "small objects over TLS", 4, 250, 44, 44, 4, 1, data="W4", tls=True),
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


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """utime + stime of ``processes`` so far (/proc/<pid>/stat), those that still run."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def group(workload: str, kind: str) -> str:
    """A row group of the table: a workload behind one kind of backends."""
    return f"{workload} {kind}"


def make_pki(directory: Path) -> dict[str, str]:
    """A throwaway CA and three certificates it signs (SynthIQ / HAProxy, the backends, the
    senders), for 127.0.0.1: mutual TLS for the TLS workloads."""
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    directory.mkdir(parents=True, exist_ok=True)

    def run(*argv: str) -> None:
        subprocess.run([openssl, *argv], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=SynthIQ bench CA")
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("proxy", "pacs", "sender"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "ext.cnf")
    # HAProxy wants certificate and key in one file.
    bundle = (directory / "proxy.pem").read_text() + (directory / "proxy.key").read_text()
    (directory / "proxy.bundle").write_text(bundle)
    names = ("ca.pem", "proxy.pem", "proxy.key", "proxy.bundle", "pacs.pem", "pacs.key", "sender.pem", "sender.key")
    return {n: str(directory / n) for n in names}


def process_figures(managed: Managed) -> dict[str, float]:
    """Peak RSS of the largest runproxy process, the sum of their PSS now (workers share
    pages with the parent; PSS counts each shared page once across them), and the CPU
    seconds they used so far."""
    processes = runproxy_processes(managed)
    pss = 0.0
    for process in processes:
        try:
            pss += process.memory_full_info().pss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    cpu = cpu_seconds(processes)
    return {"peak_rss_mb": max((peak_rss_mb(p) for p in processes), default=0.0), "pss_sum_mb": pss,
            "cpu_s": cpu, "processes": len(processes)}


def bench_env(tmp: Path, *, database_url: str | None) -> dict[str, str]:
    """The environment of a benchmark's processes: its own var/ (and database, unless the
    benchmark creates one per run), a throwaway key, no Celery, no ambient config file."""
    env = os.environ | {
        "SYNTHIQ_ALLOW_DEV_KEY": "1",
        "SYNTHIQ_VAR_DIR": str(tmp / "var"),
        "DJANGO_SETTINGS_MODULE": "synthiq_project.settings",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("CELERY_BROKER_URL", "SYNTHIQ_CONFIG", "DATABASE_URL"):
        env.pop(name, None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(args.tmp_dir or tempfile.mkdtemp(prefix="synthiq-bench-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = bench_env(self.tmp, database_url=f"sqlite:///{self.tmp / 'bench.sqlite3'}")
        self.started: list[Managed] = []
        # kind -> {"backends": [...], "haproxy_port": int, "pool_port": int}
        self.sets: dict[str, dict[str, Any]] = {}
        self.pki: dict[str, str] = {}
        self.haproxy: Managed | None = None

    def managed(self, name: str, argv: list[str], ready: str | None) -> Managed:
        m = Managed(name, argv, self.env, self.tmp / "logs" / f"{name}.log", ready)
        self.started.append(m)
        return m.start(timeout=60)

    def stop_all(self) -> None:
        for m in reversed(self.started):
            m.stop()
        self.started = []

    # -- set-up -----------------------------------------------------------------------
    def setup(self, kinds: list[str]) -> None:
        """Start the backends of ``kinds`` (three of each), one HAProxy with a frontend per
        kind, and write one SynthIQ config with a pool per kind."""
        subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True)
        if "tls" in kinds:
            self.pki = make_pki(self.tmp / "pki")
        for kind in kinds:
            backends = self.start_sim_backends() if kind == "sim" else self.start_storescps(kind)
            self.sets[kind] = {"backends": backends}
        self.start_haproxy()
        pools = []
        for kind, backend_set in self.sets.items():
            backend_set["pool_port"] = free_port()
            pool: dict[str, Any] = {
                "Id": kind,
                "AeTitle": "SYNTHIQ",
                "Host": "127.0.0.1",
                "Port": backend_set["pool_port"],
                "Backends": [{k: v for k, v in b.items() if k != "url"} for b in backend_set["backends"]],
            }
            if kind == "tls":
                pool["Tls"] = {"Certificate": self.pki["proxy.pem"], "Key": self.pki["proxy.key"],
                               "CA": self.pki["ca.pem"], "RequireClientCertificate": True}
            pools.append(pool)
        config = {
            "HeartbeatIntervalSeconds": 5,
            # No heartbeat runs in the bench: the health rows written below stay valid.
            "HeartbeatTimeoutSeconds": 86400,
            "Network": {"MaxPduBytes": self.args.max_pdu},
            "Pools": pools,
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
        subprocess.run([PYTHON, "-c", HEALTHY_SCRIPT, str(self.proxy_config)], cwd=ROOT, env=self.env, check=True)

    def start_sim_backends(self) -> list[dict[str, Any]]:
        backends = []
        for letter in "abc":
            port, http_port = free_port(), free_port()
            ae = f"NODE{letter.upper()}"
            self.managed(
                f"backend-{letter}",
                [PYTHON, "manage.py", "runbackend", "--ae-title", ae, "--port", str(port),
                 "--http-port", str(http_port)],
                "runbackend ready",
            )
            backends.append(
                {
                    "Id": f"node-{letter}",
                    "AeTitle": ae,
                    "Host": "127.0.0.1",
                    "Port": port,
                    "Health": {"Mode": "native", "Url": f"http://127.0.0.1:{http_port}/api/health"},
                    "url": f"http://127.0.0.1:{http_port}",
                }
            )
        return backends

    def start_storescps(self, kind: str) -> list[dict[str, Any]]:
        """Three DCMTK storescp, one child per association, discarding what they receive,
        Nagle off (TCP_NODELAY=1: DCMTK leaves it on otherwise) and the largest max PDU."""
        exe = shutil.which("storescp") or "/usr/bin/storescp"
        env = self.env | {"TCP_NODELAY": "1"}
        backends = []
        for letter in "abc":
            port = free_port()
            ae = f"{kind.upper()}{letter.upper()}"
            argv = [exe, "--fork", "--ignore", "-pdu", str(STORESCP_MAX_PDU), "--aetitle", ae]
            if kind == "tls":
                argv += ["+tls", self.pki["pacs.key"], self.pki["pacs.pem"], "+cf", self.pki["ca.pem"]]
            argv.append(str(port))
            m = Managed(f"storescp-{kind}-{letter}", argv, env, self.tmp / "logs" / f"storescp-{kind}-{letter}.log")
            self.started.append(m)
            m.start()
            wait_port(port)
            backend: dict[str, Any] = {"Id": f"{kind}-{letter}", "AeTitle": ae, "Host": "127.0.0.1", "Port": port,
                                       "Health": {"Mode": "liveness", "Probe": "tcp"}}
            if kind == "tls":
                backend["Tls"] = {"CA": self.pki["ca.pem"], "Certificate": self.pki["proxy.pem"],
                                  "Key": self.pki["proxy.key"]}
            backends.append(backend)
        return backends

    def start_haproxy(self) -> None:
        """One HAProxy, a frontend per kind of backends: TCP, round-robin; for ``tls`` it
        terminates the sender's TLS (client certificate required) and re-originates TLS to
        the backends with its own client certificate."""
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        sections = []
        for kind, backend_set in self.sets.items():
            backend_set["haproxy_port"] = port = free_port()
            bind = f"127.0.0.1:{port}"
            server_tls = ""
            if kind == "tls":
                bind += f" ssl crt {self.pki['proxy.bundle']} ca-file {self.pki['ca.pem']} verify required"
                server_tls = f" ssl verify required ca-file {self.pki['ca.pem']} crt {self.pki['proxy.bundle']}"
            servers = "\n".join(
                f"    server {b['Id']} 127.0.0.1:{b['Port']}{server_tls}" for b in backend_set["backends"]
            )
            sections.append(f"""frontend dicom-{kind}
    bind {bind}
    default_backend pacs-{kind}
backend pacs-{kind}
    balance roundrobin
{servers}
""")
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text("""global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
""" + "".join(sections))
        subprocess.run([exe, "-c", "-q", "-f", str(cfg)], check=True)
        self.haproxy = self.managed("haproxy", [exe, "-db", "-f", str(cfg)], None)
        for backend_set in self.sets.values():
            wait_port(backend_set["haproxy_port"])
        self.haproxy_version = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.splitlines()[0]

    def start_synthiq(self, run_id: str, *, verify: bool = False, event_loop: str = "uvloop") -> Managed:
        subprocess.run([PYTHON, "-c", _RESET_SCRIPT], cwd=ROOT, env=self.env, check=True)
        config = self.verify_config if verify else self.proxy_config
        argv = [PYTHON, "manage.py", "runproxy", "--config", str(config), "--no-http", "--event-loop", event_loop]
        if self.args.workers > 1:
            argv += ["--workers", str(self.args.workers)]
        return self.managed(f"runproxy-{run_id}", argv, "runproxy ready")

    def start_profiler(self, proxy: Managed, run_id: str) -> subprocess.Popen | None:
        """py-spy attached to runproxy, collapsed stacks (flamegraph.pl / speedscope input)."""
        if not self.args.profile:
            return None
        out = self.args.out.parent / "profiles" / f"{run_id}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
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
            # Sample without stopping runproxy: the blocking default stretched W4's wall 5x.
            "--nonblocking",
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
    def load(self, workload: Workload, kind: str, data: Path, port: int, called_ae: str,
             out: Path) -> dict[str, Any]:
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
            "--json",
            str(out),
            "--no-progress",
            "--sender",
            "storescu",
        ]
        if workload.nagle:
            argv.append("--nagle")
        if kind == "tls":
            argv += ["--tls", self.pki["sender.key"], self.pki["sender.pem"], self.pki["ca.pem"]]
        if kind == "sim":
            # The simulated backends count what they hold: failed and split from there.
            argv.append("--reset-holdings")
            for b in self.sets[kind]["backends"]:
                argv += ["--backend-url", b["url"]]
        proc = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True)
        if not out.exists():
            raise RuntimeError(f"loadtest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        result = json.loads(out.read_text())
        # storescu reports per association, not per instance: what the backends hold decides
        # (storescp --ignore holds nothing: there, storescu's exit status decides).
        if "instances_held" in result:
            result["failed"] = max(result["failed"], result["instances"] - result["instances_held"])
        if proc.returncode:
            log(f"loadtest reported failures: {proc.stderr.strip()[-400:]}")
        return result

    def measure(self, workload: Workload, kind: str, path: str, run: int, data: Path) -> dict[str, Any]:
        out = self.tmp / "results" / f"{workload.name}-{kind}-{path}-{run}.json"
        out.parent.mkdir(exist_ok=True)
        backend_set = self.sets[kind]
        if path == "direct":
            first = backend_set["backends"][0]
            result = self.load(workload, kind, data, first["Port"], first["AeTitle"], out)
        elif path == "haproxy":
            assert self.haproxy is not None and self.haproxy.proc is not None
            before = cpu_seconds([psutil.Process(self.haproxy.proc.pid)])
            result = self.load(workload, kind, data, backend_set["haproxy_port"], "SYNTHIQ", out)
            result["cpu_s"] = cpu_seconds([psutil.Process(self.haproxy.proc.pid)]) - before
        else:
            verify = path == VERIFY_PATH
            event_loop = "asyncio" if path == ASYNCIO_PATH else "uvloop"
            run_id = f"{workload.name}-{kind}-{run}{'-verify' if verify else ''}-{event_loop}"
            proxy = self.start_synthiq(run_id, verify=verify, event_loop=event_loop)
            prof = self.start_profiler(proxy, run_id)
            try:
                idle = process_figures(proxy)["cpu_s"]
                result = self.load(workload, kind, data, backend_set["pool_port"], "SYNTHIQ", out)
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
            f"{workload.name} {kind:4s} {path:8s} run {run}: {result['wall_s']:.2f} s, "
            f"{result['instances_per_s']:.1f} inst/s, {result['mb_per_s']:.1f} MB/s, failed {result['failed']}, "
            f"split {result.get('studies_split')}"
            + (f", CPU {result['cpu_s']:.2f} s" if "cpu_s" in result else "")
            + (f", peak RSS {result['peak_rss_mb']:.0f} MB, PSS {result['pss_sum_mb']:.0f} MB over "
               f"{result['processes']} process(es)" if "peak_rss_mb" in result else "")
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
        paths = [p for p in (*PATHS, ASYNCIO_PATH) if p in (self.args.paths or PATHS)]
        verify = set(self.args.verify or ["W2"]) if self.args.verify is not None else set()
        if verify:
            paths.append(VERIFY_PATH)
        chosen = self.args.backends or list(KINDS)
        # The TLS pair runs behind fast backends that speak TLS, whatever --backends says.
        plan = {w.name: (["tls"] if w.tls else [k for k in KINDS if k in chosen]) for w in workloads}
        kinds = [k for k in ("fast", "sim", "tls") if any(k in ks for ks in plan.values())]
        data = {}
        for w in workloads:
            data[w.name] = self.tmp / "data" / ("quick-" if self.args.quick else "") / (w.data or w.name)
            log(f"generating {w.name} ({w.describe()}) in {data[w.name]}")
            generate(w, data[w.name])
        self.setup(kinds)
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {
            group(w.name, k): {p: [] for p in paths} for w in workloads for k in plan[w.name]
        }
        for run in range(1, self.args.runs + 1):
            for w in workloads:
                for k in plan[w.name]:
                    for p in paths:
                        if p != VERIFY_PATH or (w.name in verify and k == "sim"):  # the verifier asks by C-FIND
                            raw[group(w.name, k)][p].append(self.measure(w, k, p, run, data[w.name]))
        rows = summarize(list(raw), paths, raw)
        db = {} if self.args.no_db else self.db_benchmarks()
        return {
            "when_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "haproxy": getattr(self, "haproxy_version", None),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "workloads": {w.name: {"title": w.title, "shape": w.describe(), "backends": plan[w.name]}
                          for w in workloads},
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


HEALTHY_SCRIPT = """
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


def summarize(groups: list[str], paths: list[str], raw) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        workload, kind = g.split(" ")
        ha = raw[g].get("haproxy")
        ha_wall = statistics.median(r["wall_s"] for r in ha) if ha else None
        direct = raw[g].get("direct")
        direct_wall = statistics.median(r["wall_s"] for r in direct) if direct else None
        cpu_per_gb: dict[str, float] = {}
        group_rows: list[dict[str, Any]] = []
        for p in paths:
            runs = raw[g][p]
            if not runs:  # the verifier's path runs only the workloads --verify names
                continue
            walls = [r["wall_s"] for r in runs]
            wall = statistics.median(walls)
            mid = min(runs, key=lambda r: abs(r["wall_s"] - wall))
            row: dict[str, Any] = {
                "workload": workload,
                "backends": kind,
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
                "studies_split": max((r.get("studies_split") or 0) for r in runs) if kind == "sim" else None,
                "studies": mid["studies"],
                "failed": sum(r["failed"] for r in runs),
                "cpu_s": None,
                "cpu_s_per_gb": None,
                "cpu_s_per_1000": None,
                "cpu_ratio_to_haproxy": None,
            }
            cpus = [r["cpu_s"] for r in runs if "cpu_s" in r]
            if cpus:
                # Median over the runs, per GB (10^9 bytes of DICOM files) and per 1,000 instances.
                cpu = statistics.median(cpus)
                row["cpu_s"] = cpu
                row["cpu_s_per_gb"] = cpu_per_gb[p] = cpu / (mid["bytes"] / 1e9)
                row["cpu_s_per_1000"] = cpu / (mid["instances"] / 1000)
            if "verified" in mid:
                row |= {k: mid[k] for k in ("verified_at_end", "verified", "verify_catch_up_s", "verdicts")}
            group_rows.append(row)
        rows += group_rows
        for row in group_rows:
            if row["cpu_s_per_gb"] is not None and cpu_per_gb.get("haproxy"):
                row["cpu_ratio_to_haproxy"] = row["cpu_s_per_gb"] / cpu_per_gb["haproxy"]
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
    head = ("workload", "backends", "path", "wall s", "inst/s", "MB/s", "x HAProxy", "x direct", "CPU s",
            "CPU s/GB", "CPU s/1k inst", "CPU x HAProxy", "peak RSS MB", "PSS sum MB", "split", "failed")

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in result["rows"]:
        lines.append(
            " | ".join(
                [
                    r["workload"],
                    r["backends"],
                    r["path"],
                    f"{r['wall_s']:.2f}",
                    f"{r['instances_per_s']:.1f}",
                    f"{r['mb_per_s']:.1f}",
                    num(r["ratio_to_haproxy"], ".2f"),
                    num(r["ratio_to_direct"], ".2f"),
                    num(r["cpu_s"], ".2f"),
                    num(r["cpu_s_per_gb"], ".2f"),
                    num(r["cpu_s_per_1000"], ".3f"),
                    num(r["cpu_ratio_to_haproxy"], ".1f"),
                    num(r["peak_rss_mb"], ".0f"),
                    num(r["pss_sum_mb"], ".0f"),
                    "-" if r["studies_split"] is None else f"{r['studies_split']}/{r['studies']}",
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
    parser.add_argument("--paths", nargs="*", choices=(*PATHS, ASYNCIO_PATH),
                        help=f"default: the first three; {ASYNCIO_PATH} is runproxy on asyncio's own event loop")
    parser.add_argument("--backends", nargs="*", choices=KINDS,
                        help="fast (storescp, the figure of record), sim (simulated Python backends); default both. "
                        "The TLS pair always runs behind fast backends speaking TLS")
    parser.add_argument("--max-pdu", type=int, default=262144, help="Network.MaxPduBytes of SynthIQ")
    parser.add_argument("--workers", type=int, default=1, help="runproxy --workers")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cpu",
        choices=["cpu", "idle"],
        help="py-spy record runproxy during SynthIQ runs (collapsed stacks in profiles/ beside --out; "
        "bench/stacks.py reads them); "
        "'idle' also samples waiting threads",
    )
    parser.add_argument("--audit-udp", metavar="HOST:PORT",
                        help="SynthIQ sends its audit messages over UDP to HOST:PORT (a local rsyslog, say): run "
                             "once with and once without to see what audit costs")
    parser.add_argument("--verify", nargs="*", metavar="W",
                        help=f"also run these workloads (default W2) through SynthIQ with the background verifier "
                             f"active ({VERIFY_PATH}, Reconciliation.QuietSeconds {VERIFY_QUIET_SECONDS}), side by "
                             f"side with the other paths, behind the simulated backends, and report the studies "
                             f"verified")
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
