"""Hiccup hold: a study's backend that cannot be reached is retried for
Network.BoundBackendHoldSeconds while the modality's association is held (its socket not
read, nothing buffered), so a backend restart inside the window costs the modality only
the one instance the restart cut — and the study stays whole."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from bench.bigfile import write_large_instance
from routing.simulators.synthetic import write_study
from tests.harness import binding_of, send_files, set_health, wait_for, wait_refreshed


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_backend_restarted_inside_the_window_costs_only_the_instance_its_restart_cut(cluster, tmp_path):
    backends = [cluster.backend("node-a", store=True), cluster.backend("node-b", store=True)]
    proxy = cluster.proxy(cluster.config(backends, HeartbeatTimeoutSeconds=600,
                                         Network={"BoundBackendHoldSeconds": 15}))
    set_health(backends)
    wait_refreshed()
    suid, files = write_study(tmp_path / "s", count=3)
    assert send_files(proxy.port, files[:1])[0].status == 0
    bound = next(b for b in backends if b.id == binding_of(suid))
    other = next(b for b in backends if b is not bound)

    # The backend dies while it holds instance 2 (its response not yet sent).
    bound.control(latency_ms=3000)
    cut: list = []
    sender = threading.Thread(target=lambda: cut.extend(send_files(proxy.port, files[1:2])))
    sender.start()
    wait_for(lambda: bound.holdings().get(suid) is not None and "route pool=main" in proxy.process.log(),
             timeout=10, what="instance 2 to reach the backend")
    time.sleep(0.5)
    bound.process.signal(signal.SIGKILL)
    bound.process.proc.wait(timeout=10)
    sender.join(timeout=30)
    assert [s.status for s in cut] == [0xA702]

    # While it is down, more of the study arrives (a large instance among it): held, not failed.
    big = tmp_path / "big" / "big.dcm"
    big.parent.mkdir()
    write_large_instance(big, pixel_bytes=64 << 20, study_uid=suid)
    held: list = []
    sender = threading.Thread(target=lambda: held.extend(send_files(proxy.port, [files[2], big])))
    pid = proxy.process.proc.pid
    before = _rss_mb(pid)
    sender.start()
    wait_for(lambda: "holding the association up to 15s" in proxy.process.log(), timeout=10,
             what="runproxy to hold the association")
    time.sleep(2.0)
    during = _rss_mb(pid)
    bound.process.start()  # back on the same port, inside the window
    sender.join(timeout=60)
    assert [s.status for s in held] == [0, 0]
    assert during - before < 20, f"RSS grew {during - before:.0f} MB while the association was held"

    # The re-send of the instance the restart cut goes through, and the study is whole.
    assert send_files(proxy.port, files[1:2])[0].status == 0
    assert binding_of(suid) == bound.id
    assert suid not in other.holdings()
    stored = list((cluster.tmp / "store" / bound.id / suid).iterdir())
    assert len(stored) == 4  # instance 1 before the restart, 2 (re-sent), 3 and the large one
    log = proxy.process.log()
    assert f"backend {bound.id} reachable again after" in log


def test_outside_the_window_the_instance_fails_with_a701(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], HeartbeatTimeoutSeconds=600,
                                         Network={"BoundBackendHoldSeconds": 2}))
    suid, files = write_study(tmp_path / "s", count=2)
    assert send_files(proxy.port, files[:1])[0].status == 0
    backend.process.stop()
    started = time.monotonic()
    [sent] = send_files(proxy.port, files[1:])
    took = time.monotonic() - started
    assert sent.status == 0xA701 and "node-a" in sent.comment
    assert 1.8 < took < 10
    # One line when it starts failing, one when the hold starts, one when it gives up, and the
    # C-STORE's verdict with every id: not one per retry (the hold retries every half second).
    wait_for(lambda: "C-STORE failed pool=main" in proxy.process.log(), timeout=10, what="the verdict line")
    log = proxy.process.log()
    assert log.count(" ERROR ") == 3, log
    assert "still unreachable after 2s held" in log
    assert f"C-STORE failed pool=main calling_ae=MODALITY source_ip=127.0.0.1 study={suid} " in log
