"""The DICOMweb benchmark (docs/dicomweb.md): STOW-RS of W1's CT through three paths side by side.

Paths: direct to one Orthanc with its DICOMweb plugin, HAProxy in HTTP mode (round-robin
over three such Orthancs, per request) and SynthIQ's DICOMweb front door over the same
three. Two variants: all the study's instances in one request, and one instance per
request (one client, one keep-alive connection, requests one after another). Each
(variant, path) runs ``--runs`` times, interleaved so that the paths see the same machine
load; the Orthancs are emptied before every run (each stores what it is sent). The table
shows medians, the ratio to HAProxy, and SynthIQ's peak RSS (VmHWM, reset before each
variant).

    make bench                                   # bench.run, then this
    .venv/bin/python -m bench.dicomweb --quick   # 100 instances, one run each
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from bench.run import HEALTHY_SCRIPT, PYTHON, bench_env, log, machine, peak_rss_mb, runproxy_processes
from routing.simulators.processes import ROOT, Managed, free_port, port_open, wait_for

PATHS = ("direct", "haproxy", "synthiq")
VARIANTS = ("one request", "one instance per request")
BLOCK = 256 * 1024  # the client's send block


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
    def setup(self) -> None:
        from routing.simulators.synthetic import write_study

        data = self.tmp / f"w1-{self.args.instances}"  # kept for the next run with --tmp-dir
        if not (data / ".complete").exists():
            shutil.rmtree(data, ignore_errors=True)
            write_study(data / "study", count=self.args.instances, rows=512, columns=512, patient_id="BENCH0000")
            (data / ".complete").touch()
        self.files = sorted((data / "study").glob("*.dcm"))
        self.boundary = uuid.uuid4().hex
        self.whole = self.tmp / "whole.body"  # the one-request body, sent from disk
        with self.whole.open("wb") as out:
            for path in self.files:
                out.write(part_head(self.boundary) + path.read_bytes() + b"\r\n")
            out.write(f"--{self.boundary}--\r\n".encode())
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

    def bodies(self, variant: str) -> Iterator[tuple[Any, int]]:
        if variant == "one request":
            with self.whole.open("rb") as whole:  # sent from disk in BLOCK pieces
                yield whole, self.whole.stat().st_size
            return
        tail = f"--{self.boundary}--\r\n".encode()
        for path in self.files:
            body = part_head(self.boundary) + path.read_bytes() + b"\r\n" + tail
            yield body, len(body)

    def run(self, variant: str, path: str) -> float:
        self.empty_orthancs()
        port, url = self.target(path)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=BLOCK)
        started = time.perf_counter()
        try:
            for body, length in self.bodies(variant):
                connection.request("POST", url, body=body, headers={
                    "Content-Type": content_type(self.boundary), "Content-Length": str(length),
                    "Accept": "application/dicom+json"})
                answer = connection.getresponse()
                text = answer.read()
                if answer.status != 200:
                    raise SystemExit(f"{path} {variant}: HTTP {answer.status}: {text[:300]!r}")
        finally:
            connection.close()
        wall = time.perf_counter() - started
        stored = self.stored()
        if stored != len(self.files):
            raise SystemExit(f"{path} {variant}: {stored} of {len(self.files)} instances stored")
        return wall

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

    def measure(self) -> dict[str, Any]:
        raw: dict[str, dict[str, list[float]]] = {}
        rss: dict[str, float] = {}
        for variant in VARIANTS:
            raw[variant] = {p: [] for p in PATHS}
            self.reset_peak_rss()
            for n in range(self.args.runs):
                order = PATHS[n % len(PATHS):] + PATHS[:n % len(PATHS)]  # interleaved, each path first in turn
                for path in order:
                    wall = self.run(variant, path)
                    raw[variant][path].append(wall)
                    log(f"{variant} / {path} run {n + 1}: {wall:.2f}s")
            rss[variant] = self.synthiq_peak_rss()
        size = sum(p.stat().st_size for p in self.files)
        rows = []
        for variant in VARIANTS:
            ha = statistics.median(raw[variant]["haproxy"])
            for path in PATHS:
                wall = statistics.median(raw[variant][path])
                rows.append({"variant": variant, "path": path, "wall_s": wall, "runs": raw[variant][path],
                             "mb_per_s": size / 1e6 / wall, "ratio_to_haproxy": wall / ha,
                             "peak_rss_mb": rss[variant] if path == "synthiq" else None})
        return {"instances": len(self.files), "bytes": size, "rows": rows, "runs": self.args.runs,
                "haproxy": self.haproxy_version, "machine": machine(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def table(result: dict[str, Any]) -> str:
    lines = [f"STOW-RS of {result['instances']} instances ({result['bytes'] / 1e6:.0f} MB), median of "
             f"{result['runs']} run(s)", "",
             "| variant | path | wall s | MB/s | × HAProxy | SynthIQ peak RSS MB |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else ""
        lines.append(f"| {r['variant']} | {r['path']} | {r['wall_s']:.2f} | {r['mb_per_s']:.0f} | "
                     f"{r['ratio_to_haproxy']:.2f} | {rss} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dicomweb", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 instances, one run each: a sanity check")
    parser.add_argument("--runs", type=int, default=None, help="runs per (variant, path); default 3 (1 with --quick)")
    parser.add_argument("--instances", type=int, default=None, help="instances of W1's CT; default 500")
    parser.add_argument("--workers", type=int, default=1, help="runproxy --workers")
    parser.add_argument("--tmp-dir", default=None, help="keep data and logs here (default: a new temporary one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dicomweb.json"))
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.instances = args.instances or (100 if args.quick else 500)
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
    print(f"\nmachine: {m['nproc']} x {m['cpu']}, {m['ram_gb']} GB RAM; {result['haproxy']}; results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
