"""Health reaches routing in order: an older heartbeat result never overwrites a newer one,
an older snapshot never replaces a newer one, a backend that went silent leaves Tier 2 at
its timeout whatever the refresh schedule, and the herding guard counts each instance once.

These pin the causes of the failover test's flakiness (a new study placed on a backend just
logged UNHEALTHY): each fails on the code before the fix, deterministically."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from affinity.bindings import Bindings
from health.models import BackendHealth
from health.probes import ProbeError, Reading
from health.services import Outcome, backend_health_record
from routing.router import Router
from tests.harness import set_health
from tests.health.helpers import config_apply, health_row

pytestmark = pytest.mark.postgres

TIMEOUT = 3.0


@pytest.fixture
def pool(db):
    config_apply({"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Port": 11112, "Backends": [
        {"Id": backend_id, "AeTitle": backend_id.upper().replace("-", ""), "Host": "127.0.0.1", "Port": port,
         "Health": {"Mode": "native", "Url": f"http://127.0.0.1:{port}/api/health"}}
        for backend_id, port in (("node-a", 41001), ("node-b", 41002))]}]})
    set_health(["node-a"], load=0.0, capacity=50)
    set_health(["node-b"], load=0.5, capacity=50)


def router() -> Router:
    r = Router(bindings=Bindings(window_hours=1), heartbeat_timeout=TIMEOUT)
    r.refresh(pool_ids=["main"])
    return r


def place(r: Router, study_uid: str) -> str:
    """Route a new single-instance study and send its instance, as the relay does."""
    backend_id = r.route_many([("main", study_uid)])[("main", study_uid)].backend_id
    assert backend_id is not None
    r.note_sent(backend_id)
    return backend_id


def states(r: Router) -> dict[str, object]:
    return {b.id: b for b in r.states("main")}


def test_each_instance_counts_once_in_the_herding_guard(pool):
    # node-a (load 0) has room for 25 instances before it is as busy as node-b (0.5 of 50):
    # 13 single-instance studies must all go there. Counted twice, the 13th went to node-b.
    r = router()
    placed = [place(r, f"1.2.3.{n}") for n in range(13)]
    assert placed == ["node-a"] * 13
    assert states(r)["node-a"].sent_since_report == 13


def test_a_burst_placed_in_one_batch_is_counted_before_it_is_sent(pool):
    # The guard still counts placements at once: a burst decided together spreads.
    r = router()
    routes = r.route_many([("main", f"1.2.4.{n}") for n in range(40)])
    assert {route.backend_id for route in routes.values()} == {"node-a", "node-b"}
    for route in routes.values():
        r.note_sent(route.backend_id)  # their first instances: not counted again
    assert sum(b.sent_since_report for b in r.states("main")) == 40


def test_a_silent_backend_leaves_tier2_at_its_timeout_without_waiting_for_a_refresh(pool):
    r = router()
    assert place(r, "1.2.5.1") == "node-a"
    assert r.healthy_backends("main") == ["node-a", "node-b"]
    # No refresh since: node-a's last good heartbeat passes the timeout (node-b's too, so
    # node-b is refreshed as answering on time by moving the clock past node-a's alone).
    last_ok_a = health_row("node-a").last_ok_utc.timestamp()
    BackendHealth.objects.filter(backend_id="node-b").update(
        last_ok_utc=dt.datetime.fromtimestamp(last_ok_a + TIMEOUT, dt.UTC))
    r.refresh(pool_ids=["main"])
    r.clock = lambda: last_ok_a + TIMEOUT + 0.5
    assert r.healthy_backends("main") == ["node-b"]
    assert [place(r, f"1.2.5.{n}") for n in range(2, 6)] == ["node-b"] * 4


def test_an_older_snapshot_never_replaces_a_newer_one(pool, monkeypatch):
    """Two refreshes overlap (the periodic one and a reload's): the one whose read began
    first finishes last. Its view (node-a healthy) must not undo the newer one's."""
    from django.db import connection

    from health import selectors as health_selectors

    r = router()
    first_read, newer_applied = threading.Event(), threading.Event()
    real = health_selectors.backend_health_rows

    def read_then_pause(*, backend_ids):
        rows = real(backend_ids=backend_ids)
        if threading.current_thread().name == "older-refresh":  # it read node-a healthy
            first_read.set()
            assert newer_applied.wait(10)
            connection.close()  # this thread's own connection
        return rows

    monkeypatch.setattr(health_selectors, "backend_health_rows", read_then_pause)
    older = threading.Thread(target=r.refresh, kwargs={"pool_ids": ["main"]}, name="older-refresh")
    older.start()
    assert first_read.wait(10)
    # node-a answers "not ok": unhealthy at once, and a newer snapshot says so.
    backend_health_record(outcome=Outcome("node-a", None, ProbeError("not ok", refused=True), 0.01),
                          pool_id="main", mode="native", previous=health_row("node-a"),
                          now=dt.datetime.now(dt.UTC), timeout_seconds=TIMEOUT)
    r.refresh(pool_ids=["main"])
    newer_applied.set()
    older.join(10)
    assert r.healthy_backends("main") == ["node-b"]
    assert place(r, "1.2.6.1") == "node-b"


def test_an_older_heartbeat_result_never_overwrites_a_newer_one(pool):
    """Two runners (a slow round and the next, two hosts, inline and Celery): the result
    stamped later stands, whichever is written last."""
    now = dt.datetime.now(dt.UTC)
    earlier = now - dt.timedelta(seconds=0.5)
    refused = Outcome("node-a", None, ProbeError("backend says not ok", refused=True), 0.01)
    ok = Outcome("node-a", Reading(load=0.0, queue_depth=0, capacity=50), None, 0.01)
    assert backend_health_record(outcome=refused, pool_id="main", mode="native", previous=health_row("node-a"),
                                 now=now, timeout_seconds=TIMEOUT) is False
    backend_health_record(outcome=ok, pool_id="main", mode="native", previous=health_row("node-a"),
                          now=earlier, timeout_seconds=TIMEOUT)
    row = health_row("node-a")
    assert not row.healthy and row.last_check_utc == now and "not ok" in row.last_error
    # A newer good result does replace it.
    backend_health_record(outcome=ok, pool_id="main", mode="native", previous=row,
                          now=now + dt.timedelta(seconds=1), timeout_seconds=TIMEOUT)
    assert health_row("node-a").healthy


def test_while_the_database_is_away_health_is_judged_as_of_the_last_snapshot(pool, monkeypatch):
    """No heartbeat can be recorded during an outage: backends are not all declared silent
    (which would place every new study on the first one) but kept as last seen."""
    from django.db import OperationalError

    from pools import selectors as pool_selectors

    r = router()
    later = r.clock() + TIMEOUT + 5

    def away(*, pool_id):
        raise OperationalError("database unreachable")

    monkeypatch.setattr(pool_selectors, "backends_of_pool", away)
    with pytest.raises(OperationalError):
        r.refresh(pool_ids=["main"])
    r.clock = lambda: later
    assert r.healthy_backends("main") == ["node-a", "node-b"]
    monkeypatch.undo()
    r.refresh(pool_ids=["main"])  # back, but nothing reported since: both silent now
    assert r.healthy_backends("main") == []
