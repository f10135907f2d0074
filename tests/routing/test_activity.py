"""Retention of routing activity."""

from __future__ import annotations

import datetime as dt

from pools.models import Backend, Pool
from routing.models import ProxyProcess, RoutingDecision
from routing.services import routing_activity_purge


def test_old_decisions_and_silent_proxy_processes_are_purged(db):
    now = dt.datetime.now(dt.UTC)
    pool = Pool.objects.create(id="main", ae_title="SYNTHIQ", port=11112)
    backend = Backend.objects.create(id="node-a", pool=pool, ae_title="NODEA", host="h", port=104)
    for days in (0, 6, 8):
        RoutingDecision.objects.create(at_utc=now - dt.timedelta(days=days), pool=pool, backend=backend,
                                       study_uid=f"1.2.{days}", reason="least-busy")
    for name, hours in (("alive", 0), ("gone", 30)):
        ProxyProcess.objects.create(id=name, started_utc=now, updated_utc=now - dt.timedelta(hours=hours))
    assert routing_activity_purge(now=now) == (1, 1)
    assert sorted(RoutingDecision.objects.values_list("study_uid", flat=True)) == ["1.2.0", "1.2.6"]
    assert list(ProxyProcess.objects.values_list("id", flat=True)) == ["alive"]
