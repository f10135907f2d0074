"""Heartbeats from a real Celery worker with beat, on the real Redis: they update the
health rows a running runproxy routes by, and a dead beat shows as stale heartbeats."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import pytest

from routing.simulators.synthetic import write_study
from tests.harness import PYTHON, Managed, port_open, send_files, wait_for

pytestmark = pytest.mark.postgres

# A Redis database of its own, and a queue per run: other test runs may share the Redis.
REDIS_URL = os.environ.get("SYNTHIQ_TEST_REDIS", "redis://127.0.0.1:6379/12")
INTERVAL, TIMEOUT, PUBLISH = 1, 3, 2.0


def send_new_study(port: int, directory: Path) -> str:
    suid, files = write_study(directory, count=1)
    assert [s.status for s in send_files(port, files)] == [0]
    return suid


def proxy_status() -> dict:
    from routing.models import ProxyProcess

    row = ProxyProcess.objects.filter(stopped=False).order_by("-updated_utc").first()
    return (row.counters if row else {}) | {"_updated": row.updated_utc if row else None}


def test_celery_beat_heartbeats_feed_runproxy_and_a_dead_beat_shows_stale(cluster, tmp_path):
    from health.models import HeartbeatRound
    from routing.models import RoutingDecision
    from tests.health.helpers import health_row

    if not port_open(6379):
        pytest.fail("Redis is not listening on 127.0.0.1:6379: install Debian's redis-server "
                    "(apt-get install redis-server) and start it (service redis-server start)")
    a = cluster.backend("node-a", queue_depth=30)  # load 0.6
    b = cluster.backend("node-b")  # load 0: least busy, but not the fallback (first by id)
    env = {"CELERY_BROKER_URL": REDIS_URL, "SYNTHIQ_CELERY_QUEUE": f"synthiq-test-{uuid.uuid4().hex[:12]}"}
    proxy = cluster.proxy(cluster.config([a, b], HeartbeatIntervalSeconds=INTERVAL,
                                         HeartbeatTimeoutSeconds=TIMEOUT), extra_env=env)
    assert "heartbeats come from Celery beat" in proxy.process.log()
    assert not HeartbeatRound.objects.exists()  # runproxy itself polls nothing

    worker = Managed(
        "celery",
        [PYTHON, "-m", "celery", "-A", "synthiq_project", "worker", "-B", "--pool", "solo",
         "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "info",
         "-n", f"synthiq-test-{os.getpid()}@%h", "-s", str(tmp_path / "beat-schedule")],
        cluster.env | env | {"SYNTHIQ_CONFIG": str(proxy.config_path)},
        tmp_path / "logs" / "celery.log", " ready.",
    )
    cluster.started.append(worker)
    worker.start(timeout=60)

    wait_for(lambda: (r := HeartbeatRound.objects.filter(pool_id="main").first()) and r.runner.startswith("celery:"),
             timeout=15, what="a heartbeat round run by Celery")
    wait_for(lambda: all((r := health_row(x)) and r.healthy for x in ("node-a", "node-b")), timeout=10,
             what="health rows written by Celery")
    assert health_row("node-a").load == pytest.approx(0.6) and health_row("node-b").load == 0.0

    # runproxy picks the rows up on its snapshot refresh: least busy, not the fallback.
    n = 0

    def lands_on_b() -> bool:
        nonlocal n
        n += 1
        return send_new_study(proxy.port, tmp_path / f"s{n}") in b.holdings()

    wait_for(lands_on_b, timeout=10, interval=0.2, what="runproxy to route by Celery's health rows")
    picked = [send_new_study(proxy.port, tmp_path / f"t{m}") for m in range(3)]
    assert all(s in b.holdings() for s in picked)
    wait_for(lambda: RoutingDecision.objects.filter(study_uid__in=picked).count() == 3, timeout=10,
             what="routing decisions to be published")
    assert set(RoutingDecision.objects.filter(study_uid__in=picked).values_list("reason", flat=True)) == {"least-busy"}
    status = wait_for(lambda: (s := proxy_status()).get("heartbeat_mode") and s, timeout=10, what="proxy status")
    assert status["heartbeat_mode"] == "celery" and status["heartbeat_stale"] is False

    # Beat (and the worker) die: within three intervals the proxy says heartbeats are stale.
    worker.stop()
    last_round = HeartbeatRound.objects.get(pool_id="main").completed_utc
    wait_for(lambda: proxy_status().get("heartbeat_stale") is True, timeout=3 * INTERVAL + PUBLISH + 5,
             what="the stale-heartbeat flag")
    shown_after = (dt.datetime.now(dt.UTC) - last_round).total_seconds()
    print(f"stale heartbeats shown {shown_after:.2f}s after the last Celery round")
    assert shown_after <= 3 * INTERVAL + PUBLISH + 1.0
    wait_for(lambda: "HEARTBEATS STALE" in proxy.process.log(), timeout=5, what="the stale-heartbeat log line")
    # Not mistaken for all-healthy: once the rows are older than the timeout nothing is
    # healthy, and new studies take the logged fallback (node-a, first by id).
    late: list[str] = []

    def falls_back() -> bool:
        late.append(send_new_study(proxy.port, tmp_path / f"late-{len(late)}"))
        return late[-1] in a.holdings()

    wait_for(falls_back, timeout=TIMEOUT + 5, interval=0.2, what="new studies to fall back once rows are stale")
    assert (dt.datetime.now(dt.UTC) - last_round).total_seconds() > TIMEOUT
    wait_for(lambda: RoutingDecision.objects.filter(study_uid=late[-1]).exists(), timeout=10,
             what="the fallback decision to be published")
    assert RoutingDecision.objects.get(study_uid=late[-1]).reason == "fallback"
