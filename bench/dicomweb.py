"""The DICOMweb benchmark (docs/dicomweb.md): STOW-RS of W1's CT and W4's small objects
through three paths side by side, and SynthIQ's peak RSS with one 1 GiB part.

Paths: direct to one Orthanc with its DICOMweb plugin, HAProxy in HTTP mode (round-robin
over three such Orthancs, per request) and SynthIQ's DICOMweb front door over the same
three. Workloads: W1 (one CT study of 512x512 instances) and W4 (4 studies of ~4 KB
instances). Two variants each: all the instances in one request, and one instance per
request (one client, one keep-alive connection, requests one after another). Each
(workload, variant, path) runs ``--runs`` times, interleaved so that the paths see the same
machine load; the Orthancs are emptied before every run (each stores what it is sent). The
table shows medians, the ratio to HAProxy, and SynthIQ's peak RSS (VmHWM, reset before each
variant). Last, one request of one part of ``--big-part-mb`` through SynthIQ alone: its wall
time and SynthIQ's peak RSS (the part streams: memory must not follow its size).

    make bench                                   # bench.run, then this
    .venv/bin/python -m bench.dicomweb --quick   # small sizes, one run each, no big part
    .venv/bin/python -m bench.dicomweb --quick --big-part-mb 1024
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.run import HEALTHY_SCRIPT, PYTHON, bench_env, log, machine, peak_rss_mb, runproxy_processes
from routing.simulators.processes import ROOT, Managed, free_port, port_open, wait_for

PATHS = ("direct", "haproxy", "synthiq")
VARIANTS = ("one request", "one instance per request")
BLOCK = 256 * 1024  # the client's send block


@dataclass(frozen=True)
class Workload:
    name: str
    studies: int
    instances: int  # per study
    rows: int
    columns: int


@dataclass
class Data:
    """A workload's files (study after study, as a client sends them) and its one-request body."""

    workload: Workload
    files: list[Path]
    whole: Path


def plugin_path() -> str:
    found = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True)
    for line in found.stdout.splitlines():
        if line.endswith(".so") and "plugins" in line:
            return line
    raise SystemExit("orthanc-dicomweb is not installed (requirements/apt.txt)")


def part_head(boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()


def content_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


class DicomWebBench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(args.tmp_dir or tempfile.mkdtemp(prefix="synthiq-bench-dicomweb-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = bench_env(self.tmp, database_url=f"sqlite:///{self.tmp / 'bench.sqlite3'}")
        self.started: list[Managed] = []
        self.orthancs: list[dict[str, Any]] = []
        self.proxy: Managed | None = None

    def managed(self, name: str, argv: list[str], ready: str | None) -> Managed:
        m = Managed(name, argv, self.env, self.tmp / "logs" / f"{name}.log", ready)
        self.started.append(m)
        return m.start(timeout=60)

    def stop_all(self) -> None:
        for m in reversed(self.started):
            m.stop()
        self.started = []

    # -- set-up -----------------------------------------------------------------------
    def data(self, workload: Workload) -> Data:
        """The workload's files (kept for the next run with --tmp-dir) and its one-request body."""
        from routing.simulators.synthetic import write_study

        w = workload
        where = self.tmp / f"{w.name.lower()}-{w.studies}x{w.instances}"
        if not (where / ".complete").exists():
            shutil.rmtree(where, ignore_errors=True)
            for n in range(w.studies):
                write_study(where / f"study{n}", count=w.instances, rows=w.rows, columns=w.columns,
                            patient_id=f"BENCH{n:04d}")
            (where / ".complete").touch()
        files = [f for n in range(w.studies) for f in sorted((where / f"study{n}").glob("*.dcm"))]
        whole = self.tmp / f"{w.name.lower()}-whole.body"  # the one-request body, sent from disk
        with whole.open("wb") as out:
            for path in files:
                out.write(part_head(self.boundary) + path.read_bytes() + b"\r\n")
            out.write(f"--{self.boundary}--\r\n".encode())
        return Data(w, files, whole)

    def setup(self) -> None:
        self.boundary = uuid.uuid4().hex
        self.datas = [self.data(w) for w in self.args.workloads]
        self.start_backends()
        self.start_synthiq()

    def start_backends(self) -> None:
        exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        plugin = plugin_path()
        for letter in "abc":
            http_port, dicom_port = free_port(), free_port()
            storage = self.tmp / f"orthanc-{letter}"
            config = {"Name": f"orthanc-{letter}", "HttpPort": http_port, "DicomPort": dicom_port,
                      "DicomAet": f"ORTHANC{letter.upper()}", "StorageDirectory": str(storage),
                      "IndexDirectory": str(storage), "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                      "Plugins": [plugin]}
            path = self.tmp / f"orthanc-{letter}.json"
            path.write_text(json.dumps(config))
            self.managed(f"orthanc-{letter}", [exe, str(path)], "Orthanc has started")
            self.orthancs.append(config | {"url": f"http://127.0.0.1:{http_port}"})
        self.start_haproxy()

    def start_synthiq(self) -> None:
        subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True)
        self.web_port = free_port()
        config_json = {
            "HeartbeatIntervalSeconds": 5,
            "HeartbeatTimeoutSeconds": 86400,  # no heartbeat runs: the health rows written below stay valid
            "Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": free_port(),
                       "DicomWeb": {"Port": self.web_port},
                       "Backends": [{"Id": f"node-{o['Name'][-1]}", "AeTitle": o["DicomAet"], "Host": "127.0.0.1",
                                     "Port": o["DicomPort"], "Health": {"Mode": "liveness", "Probe": "echo"},
                                     "DicomWebUrl": f"{o['url']}/dicom-web"} for o in self.orthancs]}],
        }
        self.proxy_config = self.tmp / "synthiq.json"
        self.proxy_config.write_text(json.dumps(config_json, indent=2))
        subprocess.run([PYTHON, "-c", HEALTHY_SCRIPT, str(self.proxy_config)], cwd=ROOT, env=self.env, check=True)
        argv = [PYTHON, "manage.py", "runproxy", "--config", str(self.proxy_config), "--no-http"]
        if self.args.workers > 1:
            argv += ["--workers", str(self.args.workers)]
        self.proxy = self.managed("runproxy", argv, "runproxy ready")
        wait_for(lambda: port_open(self.web_port), timeout=30, what="SynthIQ's DICOMweb port")

    def start_haproxy(self) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.haproxy_port = free_port()
        servers = "\n".join(f"    server {o['Name']} 127.0.0.1:{o['HttpPort']}" for o in self.orthancs)
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 2000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend dicomweb
    bind 127.0.0.1:{self.haproxy_port}
    default_backend pacs
backend pacs
    balance roundrobin
{servers}
""")
        subprocess.run([exe, "-c", "-q", "-f", str(cfg)], check=True)
        self.managed("haproxy", [exe, "-db", "-f", str(cfg)], None)
        wait_for(lambda: port_open(self.haproxy_port), timeout=30, what="HAProxy")
        self.haproxy_version = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.splitlines()[0]

    # -- runs ---------------------------------------------------------------------------
    def target(self, path: str) -> tuple[int, str]:
        if path == "direct":
            return self.orthancs[0]["HttpPort"], "/dicom-web/studies"
        if path == "haproxy":
            return self.haproxy_port, "/dicom-web/studies"
        return self.web_port, "/dicom-web/studies"

    def empty_orthancs(self) -> None:
        for o in self.orthancs:
            for study in requests.get(f"{o['url']}/studies", timeout=60).json():
                requests.delete(f"{o['url']}/studies/{study}", timeout=300).raise_for_status()

    def stored(self) -> int:
        return sum(requests.get(f"{o['url']}/statistics", timeout=60).json()["CountInstances"] for o in self.orthancs)

    def bodies(self, data: Data, variant: str) -> Iterator[tuple[Any, int]]:
        if variant == "one request":
            with data.whole.open("rb") as whole:  # sent from disk in BLOCK pieces
                yield whole, data.whole.stat().st_size
            return
        tail = f"--{self.boundary}--\r\n".encode()
        for path in data.files:
            body = part_head(self.boundary) + path.read_bytes() + b"\r\n" + tail
            yield body, len(body)

    def send(self, path: str, bodies: Iterator[tuple[Any, int]], what: str) -> float:
        """POST each body on one keep-alive connection, one after another; the wall time."""
        port, url = self.target(path)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=BLOCK)
        started = time.perf_counter()
        try:
            for body, length in bodies:
                connection.request("POST", url, body=body, headers={
                    "Content-Type": content_type(self.boundary), "Content-Length": str(length),
                    "Accept": "application/dicom+json"})
                answer = connection.getresponse()
                text = answer.read()
                if answer.status != 200:
                    raise SystemExit(f"{path} {what}: HTTP {answer.status}: {text[:300]!r}")
        finally:
            connection.close()
        return time.perf_counter() - started

    def run(self, data: Data, variant: str, path: str) -> float:
        self.empty_orthancs()
        wall = self.send(path, self.bodies(data, variant), f"{data.workload.name} {variant}")
        stored = self.stored()
        if stored != len(data.files):
            raise SystemExit(f"{path} {data.workload.name} {variant}: {stored} of {len(data.files)} instances stored")
        return wall

    def big_part(self) -> dict[str, Any]:
        """One request of one part of --big-part-mb through SynthIQ: wall time and peak RSS.
        The instance is written streaming and sent from disk (never whole in the bench's RAM)."""
        from bench.bigfile import write_large_instance

        path = self.tmp / f"big-{self.args.big_part_mb}.dcm"  # kept for the next run with --tmp-dir
        if not path.exists():
            write_large_instance(path.with_suffix(".part"), pixel_bytes=self.args.big_part_mb << 20)
            path.with_suffix(".part").rename(path)
        head, tail = part_head(self.boundary), f"\r\n--{self.boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            with path.open("rb") as part:
                while block := part.read(BLOCK):
                    yield block
            yield tail
        self.empty_orthancs()
        self.reset_peak_rss()
        size = path.stat().st_size
        wall = self.send("synthiq", iter([(body(), len(head) + size + len(tail))]), "big part")
        if self.stored() != 1:
            raise SystemExit("big part: not stored")
        self.empty_orthancs()
        log(f"one part of {size / 2**20:.0f} MiB / synthiq: {wall:.2f}s")
        return {"bytes": size, "wall_s": wall, "peak_rss_mb": self.synthiq_peak_rss()}

    def reset_peak_rss(self) -> None:
        assert self.proxy is not None
        for process in runproxy_processes(self.proxy):
            try:
                Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # 5: reset VmHWM to the current RSS
            except OSError:
                pass

    def synthiq_peak_rss(self) -> float:
        assert self.proxy is not None
        return max((peak_rss_mb(p) for p in runproxy_processes(self.proxy)), default=0.0)

    def measure_variant(self, data: Data, variant: str) -> list[dict[str, Any]]:
        """Every path's runs of one (workload, variant), interleaved (each path first in turn)."""
        raw: dict[str, list[float]] = {p: [] for p in PATHS}
        self.reset_peak_rss()
        for n in range(self.args.runs):
            for path in PATHS[n % len(PATHS):] + PATHS[:n % len(PATHS)]:
                raw[path].append(self.run(data, variant, path))
                log(f"{data.workload.name} {variant} / {path} run {n + 1}: {raw[path][-1]:.2f}s")
        rss = self.synthiq_peak_rss()
        size = sum(p.stat().st_size for p in data.files)
        ha = statistics.median(raw["haproxy"])
        return [{"workload": data.workload.name, "instances": len(data.files), "bytes": size, "variant": variant,
                 "path": path, "wall_s": statistics.median(raw[path]), "runs": raw[path],
                 "mb_per_s": size / 1e6 / statistics.median(raw[path]),
                 "ratio_to_haproxy": statistics.median(raw[path]) / ha,
                 "peak_rss_mb": rss if path == "synthiq" else None} for path in PATHS]

    def measure(self) -> dict[str, Any]:
        rows = [row for data in self.datas for variant in VARIANTS for row in self.measure_variant(data, variant)]
        big = self.big_part() if self.args.big_part_mb else None
        return {"workloads": [vars(d.workload) for d in self.datas], "rows": rows, "big_part": big,
                "runs": self.args.runs, "haproxy": self.haproxy_version, "machine": machine(),
                "load_average": list(os.getloadavg()), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def table(result: dict[str, Any]) -> str:
    lines = [f"STOW-RS, median of {result['runs']} run(s)", "",
             "| workload | variant | path | wall s | MB/s | × HAProxy | SynthIQ peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else ""
        what = f"{r['workload']} ({r['instances']} instances, {r['bytes'] / 1e6:.0f} MB)"
        lines.append(f"| {what} | {r['variant']} | {r['path']} | {r['wall_s']:.2f} | {r['mb_per_s']:.1f} | "
                     f"{r['ratio_to_haproxy']:.2f} | {rss} |")
    big = result.get("big_part")
    if big:
        lines += ["", f"One part of {big['bytes'] / 2**20:.0f} MiB through SynthIQ: {big['wall_s']:.1f} s "
                      f"({big['bytes'] / 1e6 / big['wall_s']:.0f} MB/s), SynthIQ peak RSS {big['peak_rss_mb']:.0f} MB"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dicomweb", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="W1 of 100 instances, W4 of 4x50, one run each, no big part: a sanity check")
    parser.add_argument("--runs", type=int, default=None, help="runs per (variant, path); default 3 (1 with --quick)")
    parser.add_argument("--instances", type=int, default=None, help="instances of W1's CT; default 500 (100 quick)")
    parser.add_argument("--w4-instances", type=int, default=None,
                        help="instances per study of W4's 4 studies; default 250 (50 quick; 0: no W4)")
    parser.add_argument("--big-part-mb", type=int, default=None,
                        help="the one part's size in MiB for SynthIQ's peak RSS; default 1024 (0 quick: none)")
    parser.add_argument("--workers", type=int, default=1, help="runproxy --workers")
    parser.add_argument("--tmp-dir", default=None, help="keep data and logs here (default: a new temporary one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dicomweb.json"))
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.instances = args.instances or (100 if args.quick else 500)
    w4 = args.w4_instances if args.w4_instances is not None else (50 if args.quick else 250)
    args.workloads = [Workload("W1", 1, args.instances, 512, 512)] + (
        [Workload("W4", 4, w4, 44, 44)] if w4 else [])
    if args.big_part_mb is None:
        args.big_part_mb = 0 if args.quick else 1024
    bench = DicomWebBench(args)
    try:
        log(f"setting up in {bench.tmp}")
        bench.setup()
        result = bench.measure()
    finally:
        bench.stop_all()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(result))
    m = result["machine"]
    load = ", ".join(f"{v:.2f}" for v in result["load_average"])
    print(f"\nmachine: {m['nproc']} x {m['cpu']}, {m['ram_gb']} GB RAM, load average at the end {load}; "
          f"{result['haproxy']}; results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
