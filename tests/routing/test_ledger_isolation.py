"""Verification never blocks routing: a backend that hangs on C-FIND while runproxy's
verifier asks it, and a database outage while verification runs, leave stores flowing."""

from __future__ import annotations

import threading
import time

import pytest
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from routing.simulators.synthetic import write_study
from tests.harness import OwnPostgres, free_port, send_files, wait_for

pytestmark = pytest.mark.slow


class HangingPacs:
    """A real pynetdicom SCP that stores (and forgets) at once but never finishes a C-FIND."""

    def __init__(self) -> None:
        self.port = free_port()
        self.find_asked = threading.Event()
        self.release = threading.Event()
        self.stored = 0
        ae = AE(ae_title="HANGPACS")
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find)])

    def _store(self, event) -> int:
        self.stored += 1
        return 0x0000  # Success

    def _find(self, event):
        self.find_asked.set()
        self.release.wait(120)  # hangs, holding only its own association's thread
        yield 0xFE00, None  # cancelled, once the test lets go

    def config(self) -> dict:
        return {"Id": "hang", "AeTitle": "HANGPACS", "Host": "127.0.0.1", "Port": self.port,
                "Health": {"Mode": "liveness", "Probe": "echo"}}

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def pacs():
    peer = HangingPacs()
    try:
        yield peer
    finally:
        peer.stop()


def _send_studies(port: int, tmp, name: str, n: int) -> float:
    started = time.monotonic()
    for k in range(n):
        _, files = write_study(tmp / f"{name}{k}", count=2)
        assert [s.status for s in send_files(port, files)] == [0, 0]
    return time.monotonic() - started


def test_a_backend_hanging_on_the_verifiers_c_find_does_not_slow_stores(cluster, pacs, tmp_path):
    proxy = cluster.proxy(cluster.config([pacs.config()], HeartbeatTimeoutSeconds=600,
                                         Reconciliation={"QuietSeconds": 0.5}))
    before = _send_studies(proxy.port, tmp_path, "before", 8)
    wait_for(pacs.find_asked.is_set, timeout=30, what="the verifier to ask the backend")
    during = _send_studies(proxy.port, tmp_path, "during", 8)
    assert not pacs.release.is_set()  # the verifier's C-FIND still hangs, its thread with it
    assert pacs.stored == 32
    assert during < before * 3 + 2, (before, during)


@pytest.mark.postgres
def test_a_database_outage_during_verification_leaves_stores_flowing(cluster, tmp_path):
    database = OwnPostgres(cluster)
    try:
        node = cluster.backend("node-a")
        proxy = cluster.proxy(cluster.config([node.config(Health={"Mode": "liveness", "Probe": "tcp"})],
                                             HeartbeatTimeoutSeconds=600, Reconciliation={"QuietSeconds": 0.5}),
                              extra_env=database.env)
        bound, files = write_study(tmp_path / "bound", count=3)
        assert send_files(proxy.port, files[:1])[0].status == 0
        database.down()
        wait_for(lambda: "verification of pool main postponed" in proxy.process.log(), timeout=30,
                 what="the verifier to meet the outage")
        assert [s.status for s in send_files(proxy.port, files[1:])] == [0, 0]  # the bound study goes on
        _send_studies(proxy.port, tmp_path, "new", 4)  # and new studies are placed
        assert len(node.holdings()[bound]) == 3
        database.up()
        assert "verification round failed" not in proxy.process.log()
    finally:
        cluster.stop_all()
        database.drop()
