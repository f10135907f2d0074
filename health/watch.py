"""Whether heartbeat rounds are running, as each runproxy process publishes it: stale
heartbeats (no round for STALE_INTERVALS intervals: the inline thread stuck, Celery beat or
its worker gone) are shouted, not silently read as "all healthy"; routing meanwhile sees
every row go stale by itself (``health.selectors.backend_is_healthy``)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from health.selectors import STALE_INTERVALS, heartbeat_staleness
from health.services import HeartbeatPolicy

logger = logging.getLogger("synthiq.routing")

# While heartbeats are stale, repeat the error this often (not at every publish).
STALE_LOG_SECONDS = 30.0


class StalenessWatch:
    def __init__(self, policy: HeartbeatPolicy, *, inline: bool):
        self.policy = policy
        self.inline = inline  # this host runs them (else Celery beat does)
        self.since = dt.datetime.now(dt.UTC)
        self._logged_at: float | None = None

    def status(self, pool_ids: list[str]) -> dict[str, Any]:
        """The heartbeat fields of a published snapshot (blocking: reads the database)."""
        timing = {"heartbeat_interval": self.policy.interval_seconds,
                  "heartbeat_timeout": self.policy.timeout_seconds,
                  "heartbeat_mode": "inline" if self.inline else "celery"}
        try:
            stale = heartbeat_staleness(pool_ids=pool_ids, now=dt.datetime.now(dt.UTC),
                                        interval_seconds=self.policy.interval_seconds, since=self.since)
        except Exception as exc:  # database down: say so rather than claim freshness
            return timing | {"heartbeat_stale": None, "heartbeat_error": str(exc)}
        self._shout(stale)
        return timing | {"heartbeat_stale": bool(stale), "heartbeat_stale_pools": sorted(stale)}

    def _shout(self, stale: dict[str, float | None]) -> None:
        now = time.monotonic()
        if not stale:
            if self._logged_at is not None:
                logger.warning("heartbeats are running again")
            self._logged_at = None
        elif self._logged_at is None or now - self._logged_at >= STALE_LOG_SECONDS:
            self._logged_at = now
            ages = ", ".join(f"{p}: {'never' if a is None else f'{a:.0f}s ago'}" for p, a in stale.items())
            logger.error("HEARTBEATS STALE: no heartbeat round for over %.0fs (%s) - %s; every backend "
                         "will read unhealthy", STALE_INTERVALS * self.policy.interval_seconds, ages,
                         "is the inline heartbeat thread stuck?" if self.inline
                         else "is Celery beat (and a worker) running?")
