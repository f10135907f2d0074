"""The study ledger's background verification: a round verifies the bindings of each pool
that are due (quiet, not leased by another host), asking the bound backend and the other
healthy ones. The same round runs on a thread of runproxy's supervising process (no Celery
broker) or from Celery beat, never on an event loop; several hosts share the work through
each binding's lease. A database outage or a silent backend postpones, never fails.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from django.db import DatabaseError, close_old_connections

from affinity import scu
from affinity.verification import QUERY_TIMEOUT_SECONDS, verify_due
from health import selectors as health_selectors
from pools import selectors as pool_selectors
from pools.config import ReconciliationConfig

logger = logging.getLogger("synthiq.affinity")

# How often a round starts (a round that takes longer delays the next, never overlaps it).
VERIFY_ROUND_SECONDS = 5.0


def healthy_backends(*, pool_id: str, now: dt.datetime, heartbeat_timeout: float) -> set[str]:
    backends = [b for b in pool_selectors.backends_of_pool(pool_id=pool_id) if b.enabled]
    rows = health_selectors.backend_health_rows(backend_ids=[b.id for b in backends])
    return {b.id for b in backends
            if health_selectors.backend_is_healthy(row=rows.get(b.id), now=now, timeout_seconds=heartbeat_timeout)}


def verification_round(*, pool_ids: list[str], settings: ReconciliationConfig, heartbeat_timeout: float,
                       rate: scu.RateLimit | None = None, budget_seconds: float | None = None,
                       timeout: float = QUERY_TIMEOUT_SECONDS) -> int:
    """Verify what is due in each pool; returns how many bindings got a verdict. With a
    budget, no study is started after it (a Celery worker's next task must not wait long)."""
    deadline = time.monotonic() + budget_seconds if budget_seconds is not None else None
    verified = 0
    for pool_id in pool_ids:
        try:
            close_old_connections()
            healthy = healthy_backends(pool_id=pool_id, now=dt.datetime.now(dt.UTC),
                                       heartbeat_timeout=heartbeat_timeout)
        except DatabaseError as exc:
            logger.warning("verification of pool %s postponed: database unavailable (%s)", pool_id, exc)
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        verified += verify_due(pool_id=pool_id, settings=settings, healthy=healthy, rate=rate, budget_seconds=left,
                               timeout=timeout)
    return verified


class InlineVerifier:
    """Verification rounds on a thread of runproxy's supervising process."""

    def __init__(self, *, pool_ids: list[str], settings: ReconciliationConfig, heartbeat_timeout: float):
        self._plan = (list(pool_ids), settings, heartbeat_timeout)
        self._rate = scu.RateLimit(settings.max_queries_per_second)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, *, pool_ids: list[str], settings: ReconciliationConfig, heartbeat_timeout: float) -> None:
        """A reload's pools and settings, swapped in as one value."""
        if settings.max_queries_per_second != self._plan[1].max_queries_per_second:
            self._rate = scu.RateLimit(settings.max_queries_per_second)
        self._plan = (list(pool_ids), settings, heartbeat_timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="verifier", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_round = time.monotonic() + VERIFY_ROUND_SECONDS
        while not self._stop.wait(max(0.0, next_round - time.monotonic())):
            pool_ids, settings, heartbeat_timeout = self._plan
            try:
                verification_round(pool_ids=pool_ids, settings=settings, heartbeat_timeout=heartbeat_timeout,
                                   rate=self._rate)
            except Exception:  # the next round may well succeed
                logger.exception("verification round failed")
            next_round = max(next_round + VERIFY_ROUND_SECONDS, time.monotonic())

    def stop(self, *, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
