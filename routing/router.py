"""Routing as runproxy runs it: the pure waterfall fed by a snapshot of the pools'
backends and their health, refreshed from the database about once a second, and
the affinity store (hot cache in front of the database)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time

from django.db import close_old_connections

from affinity.store import AffinityStore
from health import selectors as health_selectors
from pools import selectors as pool_selectors
from routing.waterfall import AFFINITY_HIT, BackendState, Decision, WrrState, decide

logger = logging.getLogger("synthiq.routing")


@dataclasses.dataclass(frozen=True)
class BackendAddress:
    id: str
    ae_title: str
    host: str
    port: int
    tls: dict | None


@dataclasses.dataclass(frozen=True)
class Route:
    backend_id: str | None
    reason: str
    cache_hit: bool


class Router:
    def __init__(self, *, store: AffinityStore, heartbeat_timeout: float):
        self.store = store
        self.heartbeat_timeout = heartbeat_timeout
        self._lock = threading.Lock()
        self._states: dict[str, tuple[BackendState, ...]] = {}
        self._addresses: dict[str, BackendAddress] = {}
        self._wrr: dict[str, WrrState] = {}
        self._sent: dict[str, int] = {}
        self._report_seen: dict[str, dt.datetime | None] = {}

    # -- snapshot -----------------------------------------------------------
    def refresh(self, *, pool_ids: list[str]) -> None:
        """Reload backends and health. Resets the herding guard's count for every
        backend that has reported since the last refresh."""
        close_old_connections()
        now = dt.datetime.now(dt.UTC)
        states: dict[str, tuple[BackendState, ...]] = {}
        addresses: dict[str, BackendAddress] = {}
        reported: dict[str, dt.datetime | None] = {}
        for pool_id in pool_ids:
            backends = pool_selectors.backends_of_pool(pool_id=pool_id)
            rows = health_selectors.backend_health_rows(backend_ids=[b.id for b in backends])
            pool_states = []
            for b in backends:
                row = rows.get(b.id)
                healthy = health_selectors.backend_is_healthy(
                    row=row, now=now, timeout_seconds=self.heartbeat_timeout
                )
                reported[b.id] = row.last_ok_utc if row else None
                pool_states.append(
                    BackendState(
                        id=b.id,
                        weight=b.weight,
                        enabled=b.enabled,
                        draining=b.draining,
                        healthy=healthy,
                        load=row.load if (row and b.load_is_reported) else None,
                        capacity=row.capacity if row else None,
                    )
                )
                addresses[b.id] = BackendAddress(b.id, b.ae_title, b.host, b.port, b.tls)
            states[pool_id] = tuple(pool_states)
        with self._lock:
            for backend_id, seen in reported.items():
                if seen != self._report_seen.get(backend_id):
                    self._sent[backend_id] = 0
            self._report_seen = reported
            self._states = states
            self._addresses = addresses
            for pool_id in pool_ids:
                self._wrr.setdefault(pool_id, WrrState())

    def address(self, backend_id: str) -> BackendAddress:
        return self._addresses[backend_id]

    def states(self, pool_id: str) -> tuple[BackendState, ...]:
        with self._lock:
            return tuple(
                dataclasses.replace(b, sent_since_report=self._sent.get(b.id, 0))
                for b in self._states.get(pool_id, ())
            )

    def note_sent(self, backend_id: str) -> None:
        with self._lock:
            self._sent[backend_id] = self._sent.get(backend_id, 0) + 1

    # -- decisions ----------------------------------------------------------
    def route(self, *, pool_id: str, study_uid: str) -> Route:
        """Backend for the first instance of a study seen on an association."""
        key = (pool_id, study_uid)
        bound = self.store.cached(key)
        cache_hit = bound is not None
        if bound is None:
            bound = self.store.lookup(key)
        states = self.states(pool_id)
        with self._lock:
            decision: Decision = decide(
                backends=states, bound_backend_id=bound, wrr=self._wrr.setdefault(pool_id, WrrState())
            )
        if decision.backend_id is None:
            return Route(None, decision.reason, cache_hit)
        if decision.reason == AFFINITY_HIT:
            if not cache_hit:
                self.store.cache.put(key, decision.backend_id, time.monotonic())
            return Route(decision.backend_id, AFFINITY_HIT, cache_hit)
        held = self.store.claim(key, decision.backend_id, replaces=bound)
        if held != decision.backend_id:
            # Another process bound this study first: follow it.
            return Route(held, AFFINITY_HIT, False)
        return Route(held, decision.reason, False)

