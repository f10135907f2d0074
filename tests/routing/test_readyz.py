"""/readyz for the balancer or keepalived in front: it follows the DICOM listeners and the
DICOMweb listeners, and a database outage is reported in its body without pulling the node."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest
import requests

from routing import readiness
from routing.simulators.processes import free_port
from tests.harness import OwnPostgres, wait_for


def _readyz(http_port: int) -> tuple[int, dict]:
    rsp = requests.get(f"http://127.0.0.1:{http_port}/readyz", timeout=15)  # no credentials
    return rsp.status_code, rsp.json()


def test_readyz_flips_with_the_listeners_and_stays_up_without_the_database(cluster):
    database = OwnPostgres(cluster)
    proxy = None
    try:
        backend = cluster.backend("node-a")
        proxy = cluster.proxy(cluster.config([backend], pool={"AllowedCallingAeTitles": ["CT01"]}), http=True,
                              extra_env=database.env, extra_args=["--workers", "2"])
        code, body = _readyz(proxy.http_port)
        assert code == 200 and body["status"] == "ready", body
        assert body["pools"] == [{"pool": "main", "service": "DICOM", "address": f"127.0.0.1:{proxy.port}",
                                  "accepting": True, "reason": ""}]
        assert body["database"] == {"ok": True, "error": ""}

        # Both workers stopped: the kernel still completes TCP handshakes, nobody answers.
        workers = proxy.worker_pids()
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            # The last result is served for up to a second (one probe a second at most).
            code, body = wait_for(lambda: (got := _readyz(proxy.http_port))[0] == 503 and got, timeout=10,
                                  interval=0.2, what="/readyz 503 with the workers stopped")
            assert body["status"] == "not ready"
            assert "no answer to an association request" in body["pools"][0]["reason"]
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: _readyz(proxy.http_port)[0] == 200, timeout=15, what="/readyz back to 200")

        # The database away: still serving, so still ready, and the body says why to worry.
        database.down()
        code, body = _readyz(proxy.http_port)
        assert code == 200 and body["database"]["ok"] is False and body["database"]["error"], body
        database.up()
    finally:
        if proxy is not None:
            proxy.process.stop()
        database.drop()


@pytest.fixture
def web(db, monkeypatch):
    """The web app under waitress with several threads, as runproxy --http serves it, on a
    free port; its listener list is the test's (readiness.register, as runproxy does)."""
    from waitress.server import create_server

    from synthiq_project.wsgi import application

    monkeypatch.setattr(readiness, "_registered", None)  # put back whatever was registered
    server = create_server(application, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield server.effective_port
    server.close()
    thread.join(timeout=5)


@pytest.fixture
def verification_scp():
    """A real DICOM listener (pynetdicom, Verification) that notes when each connection opens."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    opened: list[float] = []
    ae = AE(ae_title="SYNTHIQ")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: opened.append(time.monotonic()))])
    yield server.server_address[1], opened
    server.shutdown()


def test_readyz_under_a_flood_opens_at_most_one_association_a_second(web, verification_scp):
    port, opened = verification_scp
    readiness.register([readiness.Listener("main", "SYNTHIQ", "127.0.0.1", port)])
    url = f"http://127.0.0.1:{web}/readyz"

    def one(at: float) -> int:
        time.sleep(max(0.0, at - time.monotonic()))
        return requests.get(url, timeout=10).status_code

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:  # 50 requests/s for 2 s
        codes = list(pool.map(one, [start + n / 50 for n in range(100)]))
    took = time.monotonic() - start

    assert codes == [200] * 100
    # A probe, then one more each second at most; the result is not kept for longer either.
    assert 2 <= len(opened) <= int(took) + 1, (len(opened), took)
    assert all(b - a > 0.8 for a, b in pairwise(opened)), opened


def test_readyz_says_why_in_generic_words_without_exception_text(web):
    closed = free_port()  # nothing listens there: the connection is refused
    readiness.register([readiness.Listener("main", "SYNTHIQ", "127.0.0.1", closed)])
    rsp = requests.get(f"http://127.0.0.1:{web}/readyz", timeout=10)
    assert rsp.status_code == 503
    assert rsp.json()["pools"] == [{"pool": "main", "service": "DICOM", "address": f"127.0.0.1:{closed}",
                                    "accepting": False, "reason": "pool main: listener did not answer"}]
    assert "Errno" not in rsp.text and "refused" not in rsp.text.lower()


# -- the DICOMweb listeners ----------------------------------------------------------------------


def test_readyz_follows_the_dicomweb_listener_of_a_running_synthiq(cluster):
    """runproxy --workers 2 with a DICOMweb front door: both listeners answer; the workers
    stopped, the DICOMweb listener is named as not answering HTTP, and /readyz is 503."""
    backend = cluster.backend("node-a")
    web_port = free_port()
    config = cluster.config([backend.config(DicomWebUrl=f"http://127.0.0.1:{free_port()}/dicom-web")],
                            pool={"DicomWeb": {"Port": web_port, "BasePath": "/web"}})
    proxy = cluster.proxy(config, http=True, extra_args=["--workers", "2"])
    code, body = _readyz(proxy.http_port)
    assert code == 200 and body["status"] == "ready", body
    assert body["pools"] == [
        {"pool": "main", "service": "DICOM", "address": f"127.0.0.1:{proxy.port}", "accepting": True, "reason": ""},
        {"pool": "main", "service": "DICOMweb", "address": f"127.0.0.1:{web_port}", "accepting": True, "reason": ""}]
    workers = proxy.worker_pids()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        code, body = wait_for(lambda: (got := _readyz(proxy.http_port))[0] == 503 and got, timeout=10,
                              interval=0.2, what="/readyz 503 with the workers stopped")
        web = next(p for p in body["pools"] if p["service"] == "DICOMweb")
        assert not web["accepting"] and web["reason"] == (
            "pool main: DICOMweb listener: no answer to an HTTP request within 2s")
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: _readyz(proxy.http_port)[0] == 200, timeout=15, what="/readyz back to 200")


@pytest.fixture
def silent_listener():
    """A port whose connections the kernel completes and nobody ever answers (never accepted)."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=8)
    yield sock.getsockname()[1]
    sock.close()


def test_a_dicomweb_listener_that_does_not_answer_http_alone_makes_readyz_503(web, verification_scp,
                                                                             silent_listener):
    dicom_port, _ = verification_scp
    readiness.register([readiness.Listener("main", "SYNTHIQ", "127.0.0.1", dicom_port),
                        readiness.Listener("main", "SYNTHIQ", "127.0.0.1", silent_listener, service="DICOMweb",
                                           base_path="/dicom-web")])
    rsp = requests.get(f"http://127.0.0.1:{web}/readyz", timeout=15)
    assert rsp.status_code == 503 and rsp.json()["status"] == "not ready"
    dicom, dicomweb = rsp.json()["pools"]
    assert dicom["accepting"] and not dicom["reason"]  # the DICOM listener is fine: DICOMweb alone decides
    assert dicomweb == {"pool": "main", "service": "DICOMweb", "address": f"127.0.0.1:{silent_listener}",
                        "accepting": False,
                        "reason": "pool main: DICOMweb listener: no answer to an HTTP request within 2s"}


@pytest.fixture
def aborting_listener():
    """A listener that answers every connection with a DICOM A-ABORT PDU and closes it."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=8)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    sock.close()
    thread.join(timeout=5)


def test_a_dicomweb_listener_that_answers_something_else_than_http_is_not_ready(web, aborting_listener):
    readiness.register([readiness.Listener("main", "SYNTHIQ", "127.0.0.1", aborting_listener, service="DICOMweb")])
    rsp = requests.get(f"http://127.0.0.1:{web}/readyz", timeout=15)
    assert rsp.status_code == 503
    assert rsp.json()["pools"][0]["reason"] == "pool main: DICOMweb listener did not answer HTTP"
