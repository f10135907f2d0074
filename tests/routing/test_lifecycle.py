"""Clean stop on SIGTERM, and the demo that `make run` starts."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time

import requests

from routing.simulators.synthetic import write_study
from synthiq_project.version import VERSION
from tests.harness import DEMO_START_SECONDS, PYTHON, ROOT, free_port, require_tool, send_files, wait_for


def test_sigterm_during_a_transfer_finishes_it_releases_outbound_and_exits_zero(cluster, tmp_path):
    backend = cluster.backend("node-a", latency_ms=1500)
    proxy = cluster.proxy(cluster.config([backend]))
    _, files = write_study(tmp_path, count=1)

    def counts() -> dict[str, int]:
        return requests.get(f"{backend.url}/api/associations", timeout=5).json()

    before = counts()  # the start-up transfer-syntax probe released one association
    results: list = []
    sender = threading.Thread(target=lambda: results.extend(send_files(proxy.port, files)))
    sender.start()
    wait_for(lambda: "route pool=main" in proxy.process.log(), timeout=10, what="the C-STORE to be routed")
    time.sleep(0.2)  # the instance is now inside the backend's 1.5 s latency

    started = time.monotonic()
    proxy.process.signal(signal.SIGTERM)
    code = proxy.process.proc.wait(timeout=15)
    sender.join(timeout=15)

    assert code == 0
    assert time.monotonic() - started < 5
    # The in-flight C-STORE completed cleanly (it would be a failure status, never a hang).
    assert [r.status for r in results] == [0x0000]
    wait_for(lambda: counts()["released"] == before["released"] + 1, timeout=5,
             what="the outbound association to be released")
    assert counts()["aborted"] == before["aborted"]


def test_the_demo_starts_and_a_study_sent_with_storescu_lands_on_a_simulated_backend(cluster, tmp_path):
    storescu = require_tool("storescu", "dcmtk")
    dicom_port, http_port = free_port(), free_port()
    # The backends' ports are fixed offsets from a base: between free_port()'s range (below
    # 20000) and the kernel's ephemeral range (32768+), where outgoing connections take theirs.
    base = random.randrange(20000, 32000 - 200)
    while any(_taken(base + n) for n in (1, 2, 3, 101, 102, 103)):
        base = random.randrange(20000, 32000 - 200)
    demo = cluster.process(
        "demo",
        [PYTHON, "manage.py", "demo", "--dicom-port", str(dicom_port), "--http", f"127.0.0.1:{http_port}",
         "--backend-base-port", str(base)],
        ready="runproxy ready", timeout=DEMO_START_SECONDS,
    )
    assert "log in as 'admin'" in demo.log()
    assert f"SynthIQ {VERSION} starting" in demo.log()
    for n in (1, 2, 3):  # every simulated backend answers its health contract from the start
        assert requests.get(f"http://127.0.0.1:{base + 100 + n}/api/health", timeout=5).json()["status"] == "ok"
    suid, _ = write_study(tmp_path / "study", count=2)
    store = subprocess.run([storescu, "-aec", "SYNTHIQ", "+sd", "127.0.0.1", str(dicom_port),
                            str(tmp_path / "study")], capture_output=True, text=True, timeout=60)
    assert store.returncode == 0, store.stderr
    holders = [n for n in (1, 2, 3)
               if suid in requests.get(f"http://127.0.0.1:{base + 100 + n}/api/holdings", timeout=5).json()]
    assert len(holders) == 1
    assert requests.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).json() == {"status": "ok"}

    # A second demo on the same ports says what is taken in one line and changes nothing: the
    # first one's printed login still works.
    import re

    from django.contrib.auth import get_user_model

    password = re.search(r"log in as 'admin' / '([^']+)'", demo.log()).group(1)
    second = subprocess.run([PYTHON, "manage.py", "demo", "--dicom-port", str(dicom_port), "--http",
                             f"127.0.0.1:{http_port}", "--backend-base-port", str(base)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "Traceback" not in second.stderr, second.stderr
    assert f"port {dicom_port}, the DICOM port (--dicom-port), is taken" in second.stderr
    assert "SynthIQ demo" not in second.stdout
    assert get_user_model().objects.get(username="admin").check_password(password)


def _taken(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_runproxy_version_names_synthiq_not_django():
    done = subprocess.run([PYTHON, "manage.py", "runproxy", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"SynthIQ {VERSION}"
