"""Health bodies against the native and certified contracts (docs/health-contract.md): the load a good
body gives, and every way a body can break the contract ending in a failed heartbeat
with a clear log line, never a crash and never a guessed load."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest

from tests.harness import free_port
from tests.health.helpers import HealthEndpoint, LogCapture, config_apply, health_row

NATIVE_OK = {"status": "ok", "queue": {"received": 3, "hold": 1, "processing": 1, "failed": 7},
             "capacity": 50, "active_associations": 2, "disk_free_bytes": 912345678,
             "throughput_per_min": 340}


@pytest.fixture
def endpoints(db):
    made: list[HealthEndpoint] = []

    def make() -> HealthEndpoint:
        made.append(HealthEndpoint())
        return made[-1]

    yield make
    for e in made:
        e.close()


def _pool(*backends: tuple[str, str, str]) -> None:
    """(id, mode, url) backends in pool main, synced into the database."""
    config_apply({
        "HeartbeatIntervalSeconds": 1, "HeartbeatTimeoutSeconds": 3,
        "Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": free_port(),
                   "Backends": [{"Id": i, "AeTitle": i.upper()[:16], "Host": "127.0.0.1", "Port": free_port(),
                                 "Health": {"Mode": mode, "Url": url}} for i, mode, url in backends]}],
    })


def _round(timeout: float = 3.0) -> dict[str, bool]:
    from health.services import HeartbeatPolicy, heartbeat_round

    return heartbeat_round(pool_id="main", policy=HeartbeatPolicy(1.0, timeout, 96), runner="test")


def test_native_load_is_received_hold_processing_over_capacity_failed_excluded(endpoints):
    e = endpoints()
    e.serve(NATIVE_OK)
    _pool(("node-a", "native", e.url))
    assert _round() == {"node-a": True}
    row = health_row("node-a")
    assert (row.healthy, row.queue_depth, row.capacity) == (True, 5, 50)
    assert row.load == pytest.approx(5 / 50)
    assert row.detail["queue"]["failed"] == 7 and row.detail["throughput_per_min"] == 340


@pytest.mark.parametrize("body, load, depth, capacity", [
    ({"status": "ok", "queue_depth": 5, "capacity": 50}, 0.1, 5, 50),
    ({"status": "ok", "queue_depth": 6, "max_associations": 4}, 1.5, 6, 4),
    ({"status": "ok", "load": 0.25, "capacity": 8, "queue_depth": 1}, 0.25, 1, 8),
    ({"status": "ok", "load": 0}, 0.0, None, None),
    ({"status": "ok", "queue_depth": 5.0, "capacity": 50.0}, 0.1, 5, 50),  # JSON Schema's integer admits 5.0
])
def test_certified_load_is_own_load_else_depth_over_capacity_or_max_associations(endpoints, body, load,
                                                                                    depth, capacity):
    e = endpoints()
    e.serve(body)
    _pool(("cert", "certified", e.url))
    assert _round() == {"cert": True}
    row = health_row("cert")
    assert row.load == pytest.approx(load) and row.queue_depth == depth and row.capacity == capacity


@pytest.mark.parametrize("mode, body", [
    ("certified", {"status": "ok", "queue_depth": 5}),
    ("native", {"status": "ok", "queue": {"received": 4, "hold": 0, "processing": 0, "failed": 0}}),
])
def test_depth_without_a_denominator_is_an_unknown_load_logged_never_guessed(endpoints, mode, body):
    e = endpoints()
    e.serve(body)
    _pool(("nodenom", mode, e.url))
    with LogCapture() as log:
        assert _round() == {"nodenom": True}
    row = health_row("nodenom")
    assert row.healthy and row.load is None and row.queue_depth in (4, 5)
    assert any("backend=nodenom" in line and "load unknown" in line for line in log.lines())


BROKEN = {
    "status missing": ("certified", dict(body={"queue_depth": 1, "capacity": 5}), "status missing"),
    "status not ok": ("native", dict(body=NATIVE_OK | {"status": "degraded"}), "status 'degraded'"),
    "queue missing": ("native", dict(body={"status": "ok", "capacity": 50}), "queue missing"),
    "depth as string": ("native", dict(body=NATIVE_OK | {"queue": {"received": "3", "hold": 0, "processing": 0,
                                                                   "failed": 0}}),
                        "queue.received: '3' is not of type 'integer'"),
    "queue field missing": ("native", dict(body=NATIVE_OK | {"queue": {"received": 3}}), "queue.hold missing"),
    "negative depth": ("certified", dict(body={"status": "ok", "queue_depth": -2, "capacity": 5}),
                       "queue_depth: -2 is less than the minimum of 0"),
    "bool depth": ("certified", dict(body={"status": "ok", "queue_depth": True, "capacity": 5}),
                   "queue_depth: True is not of type 'integer'"),
    "zero capacity": ("certified", dict(body={"status": "ok", "queue_depth": 1, "capacity": 0}),
                      "capacity: 0 is less than the minimum of 1"),
    "load as string": ("certified", dict(body={"status": "ok", "load": "0.1", "capacity": 5}),
                       "load: '0.1' is not of type 'number'"),
    "fractional depth": ("native", dict(body=NATIVE_OK | {"queue": {"received": 1.5, "hold": 0, "processing": 0,
                                                                     "failed": 0}}),
                         "queue.received: 1.5 is not of type 'integer'"),
    "null capacity": ("certified", dict(body={"status": "ok", "queue_depth": 1, "capacity": None}),
                      "capacity: None is not of type 'integer'"),
    "status not a string": ("certified", dict(body={"status": 1, "queue_depth": 1, "capacity": 5}),
                            "status: 1 is not of type 'string'"),
    "load NaN": ("certified", dict(raw=b'{"status": "ok", "load": NaN}'), "not JSON"),
    "load overflowing to infinity": ("certified", dict(raw=b'{"status": "ok", "load": 1e400}'), "out of range"),
    "no depth nor load": ("certified", dict(body={"status": "ok", "capacity": 5}), "neither queue_depth nor load"),
    "not JSON": ("native", dict(raw=b"<html>busy</html>"), "not JSON"),
    "JSON array": ("certified", dict(body=[{"status": "ok"}]), "not a JSON object"),
    "HTTP 500": ("native", dict(body={"status": "ok"}, status=500), "HTTP 500"),
    "huge body": ("native", dict(raw=b'{"status": "ok", "pad": "' + b"x" * 1_000_000 + b'"}'), "limit"),
    "huge body, no length": ("native", dict(raw=b'{"pad": "' + b"x" * 1_000_000 + b'"}', content_length=False),
                             "limit"),
    "slow answer": ("native", dict(body=NATIVE_OK, delay=2.5), "timed out"),
    "dripping body": ("certified", dict(raw=b'{"status": "ok", "queue_depth": 1, "capacity": 5}' + b" " * 100,
                                        drip=0.05), "timed out"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_body_breaking_the_contract_is_a_failed_heartbeat_with_a_clear_log_line(endpoints, case):
    mode, answer, reason = BROKEN[case]
    good, bad = endpoints(), endpoints()
    good.serve({"status": "ok", "queue_depth": 2, "capacity": 10})
    bad.serve({"status": "ok", "queue_depth": 1, "capacity": 10} if mode == "certified" else NATIVE_OK)
    _pool(("broken", mode, bad.url), ("fine", "certified", good.url))
    assert _round() == {"broken": True, "fine": True}
    before = health_row("broken")

    bad.serve(**answer)
    started = time.monotonic()
    with LogCapture() as log:
        result = _round()
    elapsed = time.monotonic() - started
    row = health_row("broken")
    assert reason in row.last_error, row.last_error
    assert any(line.startswith("heartbeat failed backend=broken") and reason in line
               for line in log.lines()), log.lines()
    # The load is the last one the backend reported, never one made up from a broken body.
    assert (row.load, row.queue_depth, row.capacity) == (before.load, before.queue_depth, before.capacity)
    assert row.last_ok_utc == before.last_ok_utc and row.last_check_utc > before.last_check_utc
    # A "not ok" is authoritative; anything else is given until the timeout to recover.
    assert result["broken"] is (case not in ("status not ok",))
    # The other backend of the round is unaffected, and no probe outlived its timeout (0.8 s).
    assert result["fine"] is True and health_row("fine").load == pytest.approx(0.2)
    assert elapsed < 2.5


@pytest.mark.parametrize("read", ["contract_native", "contract_certified"])
def test_a_status_other_than_ok_is_refused_whatever_the_rest_of_the_body_holds(read):
    import health.probes

    with pytest.raises(health.probes.ProbeError, match="backend reports status 'degraded'") as failed:
        getattr(health.probes, read)({"status": "degraded", "queue": "broken", "capacity": -1})
    assert failed.value.refused


def test_a_huge_wrong_value_is_shortened_in_the_log_line():
    from health.probes import ProbeError, contract_certified

    with pytest.raises(ProbeError) as failed:
        contract_certified({"status": "ok", "queue_depth": "9" * 60_000, "capacity": 5})
    message = str(failed.value)
    assert message.startswith("contract broken: queue_depth: '999") and message.endswith(" is not of type 'integer'")
    assert len(message) < 120


ORTHANC_METRICS = b"""# Orthanc writes unlabelled gauges with millisecond timestamps
orthanc_jobs_pending 3 1700000000000
orthanc_jobs_running 1 1700000000000
orthanc_jobs_pending{queue="other"} 99
orthanc_rest_api_active_requests 2 1700000000000
orthanc_count_instances 40 1700000000000
orthanc_disk_size_mb 1.5 1700000000000
"""


def _orthanc_probe(endpoint: HealthEndpoint):
    from health.probes import Target, probe_run
    from pools.config import HealthConfig

    health = HealthConfig.model_validate({"Mode": "adapter", "Adapter": "orthanc", "Url": endpoint.url})
    target = Target(backend_id="orthanc", pool_ae_title="SYNTHIQ", ae_title="ORTHANC", host="127.0.0.1",
                    port=free_port(), health=health)
    return probe_run(target=target, timeout=2.0)


def test_orthanc_adapter_reads_unlabelled_jobs_and_rest_requests_other_than_its_own(endpoints):
    e = endpoints()
    e.serve(raw=ORTHANC_METRICS)
    reading = _orthanc_probe(e)
    assert (reading.queue_depth, reading.capacity, reading.load) == (3 + 1 + (2 - 1), 2, 2.5)
    assert reading.detail == {"jobs_pending": 3, "jobs_running": 1, "rest_active_requests": 1,
                              "count_instances": 40, "disk_size_mb": 1.5}


@pytest.mark.parametrize("raw, reason", [
    (b"<html>busy</html>", "Orthanc metrics are not in the Prometheus text format"),
    (b'orthanc_jobs_pending{queue=1} 3\n', "Orthanc metrics are not in the Prometheus text format"),
    (b"orthanc_jobs_pending 3\n", "Orthanc metrics lack orthanc_jobs_running (is MetricsEnabled false?)"),
    (b"orthanc_jobs_pending NaN\northanc_jobs_running 1\n", "Orthanc metrics lack orthanc_jobs_pending"),
    (b"\xff\xfe orthanc", "Orthanc metrics are not UTF-8 text"),
])
def test_orthanc_metrics_that_cannot_be_read_are_a_failed_heartbeat(endpoints, raw, reason):
    from health.probes import ProbeError

    e = endpoints()
    e.serve(raw=raw)
    with pytest.raises(ProbeError, match=re.escape(reason)) as failed:
        _orthanc_probe(e)
    assert "crashed" not in str(failed.value)


def test_no_good_heartbeat_for_the_timeout_makes_a_backend_unhealthy(endpoints):
    from health.models import BackendHealth
    from health.selectors import backend_is_healthy

    e = endpoints()
    e.serve({"status": "ok", "queue_depth": 1, "capacity": 10})
    _pool(("node-a", "certified", e.url))
    assert _round(timeout=3) == {"node-a": True}
    e.serve(raw=b"garbage")
    assert _round(timeout=3) == {"node-a": True}  # one bad answer inside the timeout: a blip
    # The last good heartbeat was longer ago than the timeout (moved back, not slept for).
    BackendHealth.objects.filter(backend_id="node-a").update(
        last_ok_utc=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3.5))
    assert _round(timeout=3) == {"node-a": False}
    row = health_row("node-a")
    assert not row.healthy
    assert not backend_is_healthy(row=row, now=dt.datetime.now(dt.UTC), timeout_seconds=3)
    e.serve({"status": "ok", "queue_depth": 0, "capacity": 10})
    assert _round(timeout=3) == {"node-a": True}
    assert health_row("node-a").load == 0.0


def test_probes_of_one_round_run_concurrently(endpoints):
    slow = [endpoints() for _ in range(4)]
    for e in slow:
        e.serve({"status": "ok", "queue_depth": 1, "capacity": 10}, delay=0.5)
    _pool(*[(f"slow-{n}", "certified", e.url) for n, e in enumerate(slow)])
    started = time.monotonic()
    assert all(_round().values())
    # Four probes of 0.5 s each one after the other would take 2 s.
    assert time.monotonic() - started < 1.5


def test_round_is_recorded_for_stale_detection(endpoints):
    from health.selectors import heartbeat_last_round, heartbeat_staleness

    e = endpoints()
    e.serve(NATIVE_OK)
    _pool(("node-a", "native", e.url))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)
    assert heartbeat_staleness(pool_ids=["main"], now=dt.datetime.now(dt.UTC), interval_seconds=1,
                               since=long_ago) == {"main": None}
    _round()
    assert heartbeat_last_round(pool_id="main") is not None
    now = dt.datetime.now(dt.UTC)
    assert heartbeat_staleness(pool_ids=["main"], now=now, interval_seconds=1, since=long_ago) == {}
    assert list(heartbeat_staleness(pool_ids=["main"], now=now + dt.timedelta(seconds=3.5),
                                    interval_seconds=1, since=long_ago)) == ["main"]
