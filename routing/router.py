"""Routing as runproxy runs it: the pure waterfall fed by a snapshot of the pools'
backends and their health (refreshed from the database about once a second), and the
affinity bindings (hot cache in front of the database, ``affinity.bindings``).

A snapshot is ordered by when its read began: one read earlier never replaces one read
later. Health is judged again at each decision, not only at each refresh: a backend whose
last good heartbeat is older than the heartbeat timeout leaves Tier 2 at that moment,
whenever the next refresh comes, and only a snapshot with a newer good heartbeat brings
it back.

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
from collections import deque
from concurrent.futures import Future
from typing import Any

from django.db import close_old_connections

from affinity.bindings import Bindings, Key
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
# The herding guard remembers at most this many sends per backend (its count saturates).
SENDS_REMEMBERED = 65536


@dataclasses.dataclass(frozen=True)
class Route:
    backend_id: str | None
    reason: str
    cache_hit: bool


class Router:
    def __init__(self, *, bindings: Bindings, heartbeat_timeout: float):
        self.bindings = bindings
        self.heartbeat_timeout = heartbeat_timeout
        self._lock = threading.Lock()
        self._states: dict[str, tuple[BackendState, ...]] = {}
        self._addresses: dict[str, BackendAddress] = {}
        self._wrr: dict[str, WrrState] = {}
        # Herding guard: when each instance went to each backend (wall clock), and when
        # each backend last reported; what was sent after its report is not in it yet.
        self._sends: dict[str, deque[float]] = {}
        self._reported_at: dict[str, float] = {}
        # Placements counted before their first instance is sent: that send is not counted
        # again (each instance counts once).
        self._placed_unsent: dict[str, deque[float]] = {}
        # When the read behind the snapshot applied began (monotonic), and how many applied.
        self._snapshot_read_at = float("-inf")
        self._reading_failed = False
        self.snapshots_applied = 0
        self.clock = time.time
        # (key, future, claim): claim=False only looks the binding up (queries never bind).
        self._requests: queue.SimpleQueue[tuple[Key, Future[Any], bool] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # -- snapshot -----------------------------------------------------------
    def refresh(self, *, pool_ids: list[str]) -> bool:
        """Reload backends and health (and with them when each backend last reported,
        which the herding guard counts from). Returns whether the snapshot was applied:
        a read that began before the one already applied is dropped (two refreshes on
        different threads, a reload's and the periodic one, may finish out of order)."""
        close_old_connections()
        read_at = time.monotonic()
        try:
            states, addresses, reported = self._read(pool_ids, dt.datetime.fromtimestamp(self.clock(), dt.UTC))
        except Exception:
            # The database is away: nobody can record a heartbeat either, so health is
            # judged as of the last snapshot until one can be read again.
            self._reading_failed = True
            raise
        with self._lock:
            if read_at < self._snapshot_read_at:
                logger.debug("a snapshot read before the one applied is dropped")
                return False
            self._snapshot_read_at = read_at
            self._reading_failed = False
            self.snapshots_applied += 1
            self._reported_at = reported
            self._states = states
            self._addresses = addresses
            for pool_id in pool_ids:
                self._wrr.setdefault(pool_id, WrrState())
        return True

    def _read(self, pool_ids: list[str], now: dt.datetime) -> tuple[
            dict[str, tuple[BackendState, ...]], dict[str, BackendAddress], dict[str, float]]:
        states: dict[str, tuple[BackendState, ...]] = {}
        addresses: dict[str, BackendAddress] = {}
        reported: dict[str, float] = {}
        for pool_id in pool_ids:
            backends = pool_selectors.backends_of_pool(pool_id=pool_id)
            rows = health_selectors.backend_health_rows(backend_ids=[b.id for b in backends])
            pool_states = []
            for b in backends:
                row = rows.get(b.id)
                healthy = health_selectors.backend_is_healthy(
                    row=row, now=now, timeout_seconds=self.heartbeat_timeout
                )
                reported[b.id] = row.last_ok_utc.timestamp() if (row and row.last_ok_utc) else 0.0
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
                addresses[b.id] = BackendAddress(b.id, b.ae_title, b.host, b.port, b.client_tls)
            states[pool_id] = tuple(pool_states)
        return states, addresses, reported

    def address(self, backend_id: str) -> BackendAddress:
        return self._addresses[backend_id]

    def states(self, pool_id: str) -> tuple[BackendState, ...]:
        """The pool's backends as the waterfall sees them now: health judged at this
        moment, and the instances sent to each since its last report."""
        with self._lock:
            return tuple(
                dataclasses.replace(b, healthy=self._healthy_now(b), sent_since_report=self._sent_since_report(b.id))
                for b in self._states.get(pool_id, ())
            )

    def _healthy_now(self, b: BackendState) -> bool:
        """Healthy in the snapshot and its last good heartbeat still within the timeout
        (caller holds the lock): a backend that went silent leaves Tier 2 on time, not at
        the refresh after. While the snapshot cannot be refreshed, as of the snapshot."""
        if self._reading_failed:
            return b.healthy
        return b.healthy and self.clock() - self._reported_at.get(b.id, 0.0) <= self.heartbeat_timeout

    def _sent_since_report(self, backend_id: str) -> int:
        """Instances sent to the backend after its last report (caller holds the lock).
        Counted against each backend's own report time, so backends whose reports land
        in different refreshes are never compared on counts of different ages."""
        sends = self._sends.get(backend_id)
        if not sends:
            return 0
        # Older than the report, or than the heartbeat timeout (no report at all: the
        # backend is unhealthy and out of Tier 2 anyway), is no longer counted.
        since = self._counted_since(backend_id)
        while sends and sends[0] <= since:
            sends.popleft()
        return len(sends)

    def _counted_since(self, backend_id: str) -> float:
        return max(self._reported_at.get(backend_id, 0.0), self.clock() - self.heartbeat_timeout)

    def note_sent(self, backend_id: str) -> None:
        """An instance is being sent to the backend. The first instance of a study this
        router just placed there was counted when it was placed: not counted twice."""
        with self._lock:
            placed = self._placed_unsent.get(backend_id)
            if placed:
                since = self._counted_since(backend_id)
                while placed and placed[0] <= since:
                    placed.popleft()  # placed long ago and never sent: nothing to match
                if placed:
                    placed.popleft()
                    return
            self._note_sent(backend_id)

    def _note_sent(self, backend_id: str) -> None:
        sends = self._sends.get(backend_id)
        if sends is None:
            sends = self._sends[backend_id] = deque(maxlen=SENDS_REMEMBERED)
        sends.append(self.clock())
        self._sent_since_report(backend_id)  # drops what the last report covers: memory stays flat

    def touch(self, pool_id: str, study_uid: str) -> None:
        self.bindings.touch((pool_id, study_uid))

    def note_instance(self, *, pool_id: str, sop_instance_uid: str, backend_id: str, study_uid: str) -> None:
        self.bindings.note_instance(pool_id=pool_id, sop_instance_uid=sop_instance_uid, backend_id=backend_id,
                                    study_uid=study_uid)

    def instance_backends(self, *, pool_id: str, sop_instance_uids: list[str]) -> dict[str, str]:
        return self.bindings.instance_backends(pool_id=pool_id, sop_instance_uids=sop_instance_uids)

    def unhealthy_backends(self, pool_id: str) -> list[str]:
        """The pool's enabled backends that are not healthy now: they may hold studies but
        cannot be asked (a fanned-out C-FIND says it did not hear from them)."""
        with self._lock:
            return [b.id for b in self._states.get(pool_id, ()) if b.enabled and not self._healthy_now(b)]

    def healthy_backends(self, pool_id: str) -> list[str]:
        """The pool's enabled, healthy backends by id (draining ones too: they hold studies)."""
        with self._lock:
            return [b.id for b in self._states.get(pool_id, ()) if b.enabled and self._healthy_now(b)]

    # -- decisions ----------------------------------------------------------
    def route_cached(self, *, pool_id: str, study_uid: str) -> Route | None:
        """The study's backend if its binding is in the hot cache and that backend is
        still enabled in the pool; None otherwise. No I/O."""
        bound = self.bindings.cached((pool_id, study_uid))
        if bound is None:
            return None
        with self._lock:
            if bound_backend(self._states.get(pool_id, ()), bound) is None:
                return None  # its backend left the pool: decide again, durably
        return Route(bound, AFFINITY_HIT, True)

    def submit(self, *, pool_id: str, study_uid: str) -> Future[Route]:
        """Route on the routing thread (batched with whatever else is waiting)."""
        future: Future[Route] = Future()
        self._enqueue((pool_id, study_uid), future, claim=True)
        return future

    def submit_lookup(self, *, pool_id: str, study_uid: str) -> Future[str | None]:
        """The backend a study is bound to (and still enabled in the pool), or None; never
        creates a binding (a query must not place a study)."""
        future: Future[str | None] = Future()
        cached = self.route_cached(pool_id=pool_id, study_uid=study_uid)
        if cached is not None:
            future.set_result(cached.backend_id)
            return future
        self._enqueue((pool_id, study_uid), future, claim=False)
        return future

    def _enqueue(self, key: Key, future: Future[Any], *, claim: bool) -> None:
        self._requests.put((key, future, claim))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name="router", daemon=True)
                    self._thread.start()

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
                routes = self.route_many([key for key, _, claim in batch if claim])
                bound = self.lookup_many([key for key, _, claim in batch if not claim])
            except Exception as exc:  # a bug fails this batch's operations, not the thread
                logger.exception("routing a batch of %d studies failed", len(batch))
                for _, future, _ in batch:
                    future.set_exception(exc)
                continue
            for key, future, claim in batch:
                future.set_result(routes[key] if claim else bound.get(key))

    def lookup_many(self, keys: list[Key]) -> dict[Key, str]:
        """The bindings of several studies whose backend is still enabled in the pool."""
        if not keys:
            return {}
        found = self.bindings.lookup_many(list(dict.fromkeys(keys)))
        with self._lock:
            return {key: backend for key, backend in found.items()
                    if bound_backend(self._states.get(key[0], ()), backend) is not None}

    def route_many(self, keys: list[Key]) -> dict[Key, Route]:
        """Route several studies at once: one lookup, the waterfall, one batched claim."""
        if not keys:
            return {}
        started = time.perf_counter()
        bound = self.bindings.lookup_many(list(dict.fromkeys(keys)))
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
                    self._note_sent(decision.backend_id)
                    placed = self._placed_unsent.get(decision.backend_id)
                    if placed is None:
                        placed = self._placed_unsent[decision.backend_id] = deque(maxlen=SENDS_REMEMBERED)
                    placed.append(self.clock())
            if decision.backend_id is None:
                routes[key] = Route(None, decision.reason, False)
            elif decision.reason == AFFINITY_HIT:
                self.bindings.cache.put(key, decision.backend_id, time.monotonic())
                routes[key] = Route(decision.backend_id, AFFINITY_HIT, False)
            elif key in bound:  # bound to a backend that left the pool: move it, conditionally
                held = self.bindings.claim(key, decision.backend_id, replaces=bound[key])
                routes[key] = Route(held, decision.reason if held == decision.backend_id else AFFINITY_HIT, False)
            else:
                claims[key] = decision
        if claims:
            held = self.bindings.claim_many({key: d.backend_id for key, d in claims.items()},  # type: ignore[misc]
                                         fallback=self._rendezvous)
            for key, decision in claims.items():
                if not self.bindings.db_ok:
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
            now = tuple(dataclasses.replace(b, healthy=self._healthy_now(b)) for b in self._states.get(pool_id, ()))
            chosen = rendezvous(backends=now, study_uid=study_uid)
        assert chosen is not None  # a claim is only made for a backend the waterfall found
        return chosen
