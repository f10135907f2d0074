from __future__ import annotations

import datetime as dt

from health.models import BackendHealth, HeartbeatRound


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
