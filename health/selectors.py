from __future__ import annotations

import datetime as dt

from health.models import BackendHealth, HeartbeatRound
from health.probes import Target


def backend_health_rows(*, backend_ids: list[str]) -> dict[str, BackendHealth]:
    return {h.backend_id: h for h in BackendHealth.objects.filter(backend_id__in=backend_ids)}


def backend_is_healthy(*, row: BackendHealth | None, now: dt.datetime, timeout_seconds: float) -> bool:
    """Healthy means a good heartbeat within the timeout, whoever runs the heartbeats:
    rows left 'healthy' by a heartbeat runner that died go stale here by themselves."""
    if row is None or not row.healthy or row.last_ok_utc is None:
        return False
    return (now - row.last_ok_utc).total_seconds() <= timeout_seconds


def heartbeat_last_round(*, pool_id: str) -> dt.datetime | None:
    row = HeartbeatRound.objects.filter(pool_id=pool_id).first()
    return row.completed_utc if row else None


def backend_health_all() -> dict[str, BackendHealth]:
    """Every backend's last known health row, by backend id (admin surface)."""
    return {h.backend_id: h for h in BackendHealth.objects.all()}


def heartbeat_rounds_all() -> dict[str, dt.datetime]:
    """When each pool's last heartbeat round completed, by pool id (admin surface)."""
    return dict(HeartbeatRound.objects.values_list("pool_id", "completed_utc"))


def heartbeat_targets(*, pool_id: str) -> list[Target]:
    """What the heartbeat round probes: the pool's enabled backends, as plain values so
    the probes can run on other threads without touching the ORM."""
    from pools.models import Backend

    backends = Backend.objects.filter(pool_id=pool_id, enabled=True).select_related("pool").order_by("id")
    return [
        Target(backend_id=b.id, pool_ae_title=b.pool.ae_title, ae_title=b.ae_title, host=b.host,
               port=b.port, health=b.health_config, tls=b.client_tls)
        for b in backends
    ]


# Heartbeats are stale (nothing runs them: beat dead, worker gone) after this many
# intervals without a completed round.
STALE_INTERVALS = 3


def heartbeat_staleness(*, pool_ids: list[str], now: dt.datetime, interval_seconds: float,
                        since: dt.datetime) -> dict[str, float | None]:
    """Seconds since each pool's last completed round (None: never), for the pools whose
    heartbeats are stale: no round for STALE_INTERVALS intervals, counted from ``since`` at the
    earliest so a process that just started does not cry wolf."""
    limit = STALE_INTERVALS * interval_seconds
    last = dict(HeartbeatRound.objects.filter(pool_id__in=pool_ids).values_list("pool_id", "completed_utc"))
    stale: dict[str, float | None] = {}
    for pool_id in pool_ids:
        completed = last.get(pool_id)
        reference = max(completed, since) if completed else since
        if (now - reference).total_seconds() > limit:
            stale[pool_id] = (now - completed).total_seconds() if completed else None
    return stale
