"""/api/status's stale-heartbeat and database-unreachable flags, from the rows that
drive them (heartbeat rounds, what each runproxy process publishes)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.admin.support import api_user, heartbeat_round

pytestmark = pytest.mark.postgres  # the selectors' queries run on both databases


@pytest.fixture
def status(db, tmp_path):
    from django.test import Client

    from pools.config import config_load
    from pools.services import config_sync

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": 11112,
                                           "Backends": [{"Id": "node-a", "AeTitle": "NODEA", "Host": "127.0.0.1",
                                                         "Port": 104, "Health": {"Mode": "liveness"}}]}]}))
    config_sync(config=config_load(path=path))
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Token {api_user().token}")

    def get() -> dict:
        rsp = client.get("/api/status")
        assert rsp.status_code == 200
        return rsp.json()

    return get


def _process(process_id: str, *, age_seconds: float = 0, stopped: bool = False, **published) -> None:
    from routing.models import ProxyProcess

    now = dt.datetime.now(dt.UTC)
    ProxyProcess.objects.update_or_create(
        id=process_id,
        defaults={"started_utc": now, "updated_utc": now - dt.timedelta(seconds=age_seconds), "stopped": stopped,
                  "counters": {"counters": {"received": 5}, "backends": {}, "open_associations": 1} | published,
                  "listeners": [{"pool": "main", "ae_title": "SYNTHIQ", "port": 11112, "accepting": True}]},
    )


def test_heartbeats_are_stale_when_no_round_ran_for_three_intervals(status):
    now = dt.datetime.now(dt.UTC)
    assert status()["heartbeat"]["stale"] is True  # never ran
    heartbeat_round("main", now)
    beat = status()["heartbeat"]
    assert beat["stale"] is False and beat["source"] == "database" and beat["interval_seconds"] == 5
    heartbeat_round("main", now - dt.timedelta(seconds=16))  # 3 x the default 5 s interval
    assert status()["heartbeat"]["stale"] is True
    # A proxy publishing its configured interval: 16 s is fine for a 10 s interval.
    _process("host:1", heartbeat_interval=10)
    assert status()["heartbeat"]["stale"] is False


def test_the_flag_runproxy_publishes_takes_precedence(status):
    heartbeat_round("main", dt.datetime.now(dt.UTC))
    _process("host:1", heartbeat_stale=True)
    beat = status()["heartbeat"]
    assert beat["stale"] is True and beat["source"] == "proxy"
    _process("host:1", heartbeat_stale=False)
    assert status()["heartbeat"]["stale"] is False


def test_a_process_that_cannot_reach_the_database_raises_the_database_flag(status):
    _process("host:1", db_ok=True, cache_size=3)
    _process("host:2", db_ok=False, db_error="OperationalError: disk full", pending_bindings=2, cache_size=4)
    body = status()
    assert body["database"] == {"ok": False, "errors": [{"process": "host:2", "error": "OperationalError: disk full"}],
                                "pending_bindings": 2}
    assert [p["db_ok"] for p in body["processes"]] == [True, False]
    assert body["cache_size"] == 7 and body["counters"]["received"] == 10 and body["counters"]["open_associations"] == 2


def test_stopped_and_silent_processes_are_left_out(status):
    _process("host:1")
    _process("host:2", stopped=True)
    _process("host:3", age_seconds=60, db_ok=False)
    body = status()
    assert [p["id"] for p in body["processes"]] == ["host:1"]
    assert body["database"]["ok"] is True and body["counters"]["received"] == 5
    _process("host:1", stopped=True)
    body = status()
    assert body["processes"] == [] and body["pools_without_listener"] == ["main"]
