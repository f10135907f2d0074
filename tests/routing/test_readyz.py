"""/readyz for the balancer or keepalived in front: it follows the DICOM listeners, and a
database outage is reported in its body without pulling the node."""

from __future__ import annotations

import os
import signal

import requests

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
        assert body["pools"] == [{"pool": "main", "address": f"127.0.0.1:{proxy.port}", "accepting": True,
                                  "reason": ""}]
        assert body["database"] == {"ok": True, "error": ""}

        # Both workers stopped: the kernel still completes TCP handshakes, nobody answers.
        workers = proxy.worker_pids()
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            code, body = _readyz(proxy.http_port)
            assert code == 503 and body["status"] == "not ready"
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
