"""The front door under a flood: 1,000 idle connections, 100 that drip an association
request one byte at a time, and 100 that announce 16 MB PDUs, all held open together from
other loopback addresses, while a real DCMTK storescu sends a study. runproxy starts with
the common open-files soft limit of 1,024 (it raises it) and stays within 300 MB."""

from __future__ import annotations

import resource
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from routing.simulators.synthetic import write_study
from tests.harness import require_tool

pytestmark = pytest.mark.slow

IDLE, DRIP, ANNOUNCE = 1000, 100, 100


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _connect(port: int, source: str) -> socket.socket | None:
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        return sock
    except OSError:
        sock.close()
        return None


def _sources(start: int, count: int, per_address: int) -> list[str]:
    """Loopback addresses other than 127.0.0.1, ``per_address`` connections each."""
    return [f"127.0.{(start + n // per_address) // 250}.{(start + n // per_address) % 250 + 2}" for n in range(count)]


def test_a_real_sender_gets_through_a_flood_of_idle_dripping_and_huge_announcing_connections(cluster, tmp_path):
    storescu = require_tool("storescu", "dcmtk")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test process holds 1,200 sockets
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]), open_files=1024)
    flood: list[socket.socket] = []
    stop = threading.Event()
    try:
        for source in _sources(0, IDLE, per_address=25):
            if (sock := _connect(proxy.port, source)) is not None:
                flood.append(sock)
        drippers = [s for s in (_connect(proxy.port, a) for a in _sources(1000, DRIP, per_address=5)) if s]
        request = b"\x01\x00\x00\x00\x00\xc5\x00\x01\x00\x00SYNTHIQ".ljust(200, b" ")
        for source in _sources(2000, ANNOUNCE, per_address=5):
            if (sock := _connect(proxy.port, source)) is not None:
                try:
                    sock.send(struct.pack(">BBL", 0x01, 0, 16_000_000) + b"\x00" * 1000)
                except OSError:
                    pass
                flood.append(sock)
        flood += drippers

        def drip() -> None:
            offset = 0
            while not stop.wait(1.0) and offset < len(request):
                for sock in drippers:
                    try:
                        sock.send(request[offset:offset + 1])
                    except OSError:
                        pass
                offset += 1

        dripping = threading.Thread(target=drip, daemon=True)
        dripping.start()
        assert len(flood) >= 1100, f"only {len(flood)} flood connections opened"
        time.sleep(1.0)

        suid, _ = write_study(tmp_path / "study", count=5)
        started = time.monotonic()
        sent = subprocess.run([storescu, "-aet", "CT01", "-aec", "SYNTHIQ", "+sd", "127.0.0.1", str(proxy.port),
                               str(tmp_path / "study")], capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
        assert sent.returncode == 0, sent.stderr
        assert len(backend.holdings()[suid]) == 5
        peak = _rss_mb(proxy.process.proc.pid)
    finally:
        stop.set()
        for sock in flood:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    log = proxy.process.log()
    print(f"storescu through the flood: {took:.1f} s; runproxy peak RSS {peak:.0f} MB")
    assert peak < 300, f"runproxy peaked at {peak:.0f} MB under the flood"
    assert "open files limit raised from 1024" in log
    assert "announced a 16000000-byte PDU" in log
    assert "closed to make room" in log or "still negotiating" in log
