"""Routing as runproxy runs it: the pure waterfall fed by a snapshot of the pools'
backends and their health (refreshed from the database about once a second), and the
affinity store (hot cache in front of the database).

Two paths. ``route_cached`` answers a study whose binding is in the hot cache, with no
I/O, on the caller's thread (the relay's event loop). Everything else goes through
``submit``: requests queue for one routing thread that takes them in batches — one
query for the bindings of the whole batch, the waterfall for each unbound study, one
multi-row insert-if-absent for the new bindings — so sustained claims run in the
thousands per second and the event loop never waits on the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import queue
import threading
import time
from concurrent.futures import Future

from django.db import close_old_connections

from affinity.store import AffinityStore, Key
from health import selectors as health_selectors
from pools import selectors as pool_selectors
from routing.relay.outbound import BackendAddress
from routing.waterfall import (
    AFFINITY_HIT,
    RENDEZVOUS,
    BackendState,
    Decision,
    WrrState,
    bound_backend,
    decide,
    rendezvous,
)

logger = logging.getLogger("synthiq.routing")

BATCH_LIMIT = 500


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
        self._requests: queue.SimpleQueue[tuple[Key, Future[Route]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

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

    def touch(self, pool_id: str, study_uid: str) -> None:
        self.store.touch((pool_id, study_uid))

    # -- decisions ----------------------------------------------------------
    def route_cached(self, *, pool_id: str, study_uid: str) -> Route | None:
        """The study's backend if its binding is in the hot cache and that backend is
        still enabled in the pool; None otherwise. No I/O."""
        bound = self.store.cached((pool_id, study_uid))
        if bound is None:
            return None
        with self._lock:
            if bound_backend(self._states.get(pool_id, ()), bound) is None:
                return None  # its backend left the pool: decide again, durably
        return Route(bound, AFFINITY_HIT, True)

    def submit(self, *, pool_id: str, study_uid: str) -> Future[Route]:
        """Route on the routing thread (batched with whatever else is waiting)."""
        future: Future[Route] = Future()
        self._requests.put(((pool_id, study_uid), future))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name="router", daemon=True)
                    self._thread.start()
        return future

    def route(self, *, pool_id: str, study_uid: str) -> Route:
        """Backend for the first instance of a study seen on an association (blocking)."""
        return self.route_cached(pool_id=pool_id, study_uid=study_uid) or self.submit(
            pool_id=pool_id, study_uid=study_uid).result()

    def stop(self) -> None:
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _serve(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH_LIMIT:
                try:
                    item = self._requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._requests.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                routes = self.route_many([key for key, _ in batch])
            except Exception as exc:  # a bug fails this batch's operations, not the thread
                logger.exception("routing a batch of %d studies failed", len(batch))
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for key, future in batch:
                future.set_result(routes[key])

    def route_many(self, keys: list[Key]) -> dict[Key, Route]:
        """Route several studies at once: one lookup, the waterfall, one batched claim."""
        started = time.perf_counter()
        bound = self.store.lookup_many(list(dict.fromkeys(keys)))
        routes: dict[Key, Route] = {}
        claims: dict[Key, Decision] = {}
        for key in dict.fromkeys(keys):
            pool_id, study_uid = key
            states = self.states(pool_id)
            with self._lock:
                decision = decide(backends=states, bound_backend_id=bound.get(key),
                                  wrr=self._wrr.setdefault(pool_id, WrrState()))
                if decision.backend_id is not None and decision.reason != AFFINITY_HIT:
                    # Herding guard: a placed study counts at once, before its first instance
                    # is sent, so the rest of a burst decided in this batch sees it.
                    self._sent[decision.backend_id] = self._sent.get(decision.backend_id, 0) + 1
            if decision.backend_id is None:
                routes[key] = Route(None, decision.reason, False)
            elif decision.reason == AFFINITY_HIT:
                self.store.cache.put(key, decision.backend_id, time.monotonic())
                routes[key] = Route(decision.backend_id, AFFINITY_HIT, False)
            elif key in bound:  # bound to a backend that left the pool: move it, conditionally
                held = self.store.claim(key, decision.backend_id, replaces=bound[key])
                routes[key] = Route(held, decision.reason if held == decision.backend_id else AFFINITY_HIT, False)
            else:
                claims[key] = decision
        if claims:
            held = self.store.claim_many({key: d.backend_id for key, d in claims.items()},  # type: ignore[misc]
                                         fallback=self._rendezvous)
            for key, decision in claims.items():
                if not self.store.db_ok:
                    routes[key] = Route(held[key], RENDEZVOUS, False)
                elif held[key] == decision.backend_id:
                    routes[key] = Route(held[key], decision.reason, False)
                else:  # another process bound this study first: follow it
                    routes[key] = Route(held[key], AFFINITY_HIT, False)
        elapsed = time.perf_counter() - started
        if elapsed > 1.0:
            logger.warning("routing %d studies took %.1fs (database slow?)", len(routes), elapsed)
        return routes

    def _rendezvous(self, key: Key) -> str:
        pool_id, study_uid = key
        with self._lock:
            chosen = rendezvous(backends=self._states.get(pool_id, ()), study_uid=study_uid)
        assert chosen is not None  # a claim is only made for a backend the waterfall found
        return chosen
