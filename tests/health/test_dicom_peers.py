"""Health against real third-party peers: liveness by C-ECHO against DCMTK's storescp,
and the Orthanc adapter against a real Orthanc with work queued."""

from __future__ import annotations

import time

import pytest

from routing.simulators.synthetic import write_study
from tests.harness import free_port, start_orthanc, start_storescp, wait_for
from tests.health.helpers import HealthEndpoint, LogCapture, config_apply, health_row

INTERVAL, TIMEOUT = 1.0, 2.0


def _pool(*backends: dict) -> None:
    config_apply({"HeartbeatIntervalSeconds": INTERVAL, "HeartbeatTimeoutSeconds": TIMEOUT,
                  "Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": free_port(),
                             "Backends": list(backends)}]})


def _round() -> dict[str, bool]:
    from health.services import HeartbeatPolicy, heartbeat_round

    return heartbeat_round(pool_id="main", policy=HeartbeatPolicy(INTERVAL, TIMEOUT, 96), runner="test")


def test_liveness_by_c_echo_against_storescp_goes_down_after_the_timeout_and_comes_back(cluster):
    port, scp = start_storescp(cluster)
    _pool({"Id": "scp", "AeTitle": "STORESCP", "Host": "127.0.0.1", "Port": port,
           "Health": {"Mode": "liveness"}})
    assert _round() == {"scp": True}
    row = health_row("scp")
    assert row.healthy and row.load is None and row.capacity is None  # up/down only

    scp.stop()
    with LogCapture() as log:
        wait_for(lambda: not _round()["scp"], timeout=TIMEOUT + 3, interval=INTERVAL / 4,
                 what="the C-ECHO failure to make scp unhealthy")
    row = health_row("scp")
    down_after = (row.last_check_utc - row.last_ok_utc).total_seconds()
    assert TIMEOUT < down_after <= TIMEOUT + INTERVAL
    assert f"C-ECHO association to STORESCP@127.0.0.1:{port} refused: nothing listens on that port" in row.last_error
    failed = [line for line in log.lines() if line.startswith("heartbeat failed backend=scp")]
    assert len(failed) == 1, failed  # logged when it started failing, not every round

    start_storescp(cluster, name="storescp-again", port=port)
    assert _round() == {"scp": True}


@pytest.mark.parametrize("probe", ["tcp", "http"])
def test_liveness_by_tcp_connect_and_http_get(cluster, probe):
    port, scp = start_storescp(cluster)
    endpoint = HealthEndpoint()
    try:
        endpoint.serve(raw=b"<html>up</html>")  # liveness reads no contract from the body
        health = {"Mode": "liveness", "Probe": probe} | ({"Url": endpoint.url} if probe == "http" else {})
        _pool({"Id": "peer", "AeTitle": "STORESCP", "Host": "127.0.0.1", "Port": port, "Health": health})
        assert _round() == {"peer": True} and health_row("peer").load is None
        if probe == "tcp":
            scp.stop()
        else:
            endpoint.serve(raw=b"down", status=500)
        assert _round() == {"peer": True}  # failed, but inside the timeout
        assert health_row("peer").last_error
        assert health_row("peer").last_check_utc > health_row("peer").last_ok_utc
    finally:
        endpoint.close()


def test_orthanc_adapter_reports_a_load_that_follows_orthancs_queued_work(cluster, tmp_path):
    orthanc = start_orthanc(cluster, ConcurrentJobs=1)
    _, files = write_study(tmp_path / "study", count=40)
    for path in files:
        study_id = orthanc.rest("POST", "/instances", data=path.read_bytes())["ParentStudy"]
    _pool({"Id": "orthanc", "AeTitle": "ORTHANC", "Host": "127.0.0.1", "Port": orthanc.dicom_port,
           "Health": {"Mode": "adapter", "Adapter": "orthanc", "Url": orthanc.url, "Capacity": 1}})
    assert _round() == {"orthanc": True}
    idle = health_row("orthanc")
    assert idle.load == 0.0 and idle.capacity == 1  # Health.Capacity: this Orthanc's ConcurrentJobs

    # Queue work: anonymizations of the study, held in the queue (paused) so the test
    # sees them however fast this machine is.
    jobs = [orthanc.rest("POST", f"/studies/{study_id}/anonymize", json={"Asynchronous": True})["ID"]
            for _ in range(6)]
    for job in jobs:
        try:
            orthanc.rest("POST", f"/jobs/{job}/pause", json={})
        except Exception:
            pass  # already finished: fine, the others are enough
    held = sum(orthanc.rest("GET", f"/jobs/{job}")["State"] in ("Paused", "Pending", "Running") for job in jobs)
    assert held >= 2, "Orthanc finished the jobs before they could be held"
    assert _round() == {"orthanc": True}
    busy = health_row("orthanc")
    print(f"Orthanc idle load {idle.load}, with {held} jobs queued {busy.load} ({busy.detail})")
    assert busy.load >= held - 0.01 and busy.queue_depth >= held

    for job in jobs:
        try:
            orthanc.rest("POST", f"/jobs/{job}/resume", json={})
        except Exception:
            pass
    started = time.monotonic()
    wait_for(lambda: _round()["orthanc"] and health_row("orthanc").load == 0.0, timeout=60, interval=0.2,
             what="Orthanc to work off its queue")
    print(f"Orthanc back to load 0 in {time.monotonic() - started:.1f}s")
    assert health_row("orthanc").detail["count_instances"] > 40  # the anonymized copies


def test_a_heartbeat_that_keeps_failing_is_logged_again_only_every_few_minutes():
    import datetime as dt

    from health.models import BackendHealth
    from health.probes import ProbeError
    from health.services import FAILURE_REMINDER_SECONDS, Outcome, _log_failure

    ok = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
    error = "C-ECHO association to X@h:104 timed out: no answer within 2.0s"
    outcome = Outcome("x", None, ProbeError(error), 2.0)

    def logged(last_check_after: float, now_after: float, last_error: str = error) -> list[str]:
        previous = BackendHealth(backend_id="x", last_error=last_error, last_ok_utc=ok,
                                 last_check_utc=ok + dt.timedelta(seconds=last_check_after))
        with LogCapture() as log:
            _log_failure(outcome=outcome, pool_id="main", mode="liveness", previous=previous, error=error,
                         now=ok + dt.timedelta(seconds=now_after))
        return log.lines()

    assert logged(0, 5, last_error="") != []  # it starts failing: logged
    assert logged(5, 10) == []  # the same cause again: quiet
    assert logged(10, 15, last_error="refused: nothing listens") != []  # another cause: logged
    reminder = logged(FAILURE_REMINDER_SECONDS - 1, FAILURE_REMINDER_SECONDS + 1)
    assert len(reminder) == 1 and reminder[0].startswith("heartbeat still failing backend=x pool=main")
