"""The affinity store as runproxy uses it: an in-memory hot cache in front of the
database, write-behind of per-instance updates, and a degraded mode that keeps
routing when the database is unreachable or its disk is full.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict

from django.db import DatabaseError, close_old_connections

from affinity import selectors, services

logger = logging.getLogger("synthiq.affinity")

Key = tuple[str, str]  # (pool id, study uid)


class HotCache:
    """LRU map of (pool, study) -> (backend, last use); entries idle past the study
    window are treated as absent. A hit costs a dict lookup under a lock."""

    def __init__(self, *, max_entries: int, window_seconds: float):
        self._data: OrderedDict[Key, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.window_seconds = window_seconds

    def get(self, key: Key, now: float) -> str | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if now - entry[1] > self.window_seconds:
                del self._data[key]
                return None
            self._data[key] = (entry[0], now)
            self._data.move_to_end(key)
            return entry[0]

    def put(self, key: Key, backend_id: str, now: float) -> None:
        with self._lock:
            self._data[key] = (backend_id, now)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class AffinityStore:
    def __init__(self, *, window_hours: float, max_cache_entries: int = 500_000):
        self.cache = HotCache(max_entries=max_cache_entries, window_seconds=window_hours * 3600)
        self.window_hours = window_hours
        self._lock = threading.Lock()
        self._touches: dict[Key, tuple[int, dt.datetime]] = {}
        # Bindings decided while the database was unavailable, written once it is back.
        self._unwritten: dict[Key, tuple[str, dt.datetime]] = {}
        self.db_ok = True
        self.db_error = ""

    # -- state of the database ------------------------------------------------
    def _db_failed(self, exc: Exception, what: str) -> None:
        if self.db_ok:
            logger.error("affinity database unavailable during %s: %s (routing continues from memory)", what, exc)
        self.db_ok, self.db_error = False, f"{type(exc).__name__}: {exc}"

    def _db_back(self) -> None:
        if not self.db_ok:
            logger.warning("affinity database reachable again")
        self.db_ok, self.db_error = True, ""

    # -- the hot path ---------------------------------------------------------
    def cached(self, key: Key) -> str | None:
        return self.cache.get(key, time.monotonic())

    def lookup(self, key: Key) -> str | None:
        """The study's binding (after a cache miss): one not yet written wins, then the database."""
        with self._lock:
            pending = self._unwritten.get(key)
        if pending:
            return pending[0]
        try:
            close_old_connections()
            backend_id = selectors.binding_backend(pool_id=key[0], study_uid=key[1])
        except DatabaseError as exc:
            self._db_failed(exc, "lookup")
            return None
        return backend_id

    def claim(self, key: Key, backend_id: str, *, replaces: str | None = None) -> str:
        """Make ``backend_id`` the study's binding unless another process got there
        first; returns the binding that holds. Written before the first instance is
        forwarded, or kept in memory if the database cannot take it now."""
        now = dt.datetime.now(dt.UTC)
        try:
            close_old_connections()
            if replaces:
                bound = services.binding_rebind(
                    pool_id=key[0], study_uid=key[1], old_backend_id=replaces, new_backend_id=backend_id
                )
            else:
                bound = services.binding_claim(pool_id=key[0], study_uid=key[1], backend_id=backend_id, now=now)
        except DatabaseError as exc:
            self._db_failed(exc, "claim")
            with self._lock:
                self._unwritten[key] = (backend_id, now)
            bound = backend_id
        else:
            self._db_back()
        self.cache.put(key, bound, time.monotonic())
        return bound

    def touch(self, key: Key) -> None:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            count, _ = self._touches.get(key, (0, now))
            self._touches[key] = (count + 1, now)

    # -- background -----------------------------------------------------------
    def flush(self) -> None:
        """Write pending bindings, then batched touches. Safe to call repeatedly."""
        with self._lock:
            unwritten, self._unwritten = self._unwritten, {}
            touches, self._touches = self._touches, {}
        try:
            close_old_connections()
            for key, (backend_id, first_seen) in unwritten.items():
                bound = services.binding_claim(
                    pool_id=key[0], study_uid=key[1], backend_id=backend_id, now=first_seen
                )
                if bound != backend_id:
                    logger.error(
                        "pool=%s study=%s was bound to %s by another process while the database "
                        "was down; this process sent it to %s: the study may be split",
                        key[0], key[1], bound, backend_id,
                    )
                    self.cache.put(key, bound, time.monotonic())
                else:
                    logger.info("pool=%s study=%s deferred binding to %s written", key[0], key[1], bound)
            unwritten = {}  # all written: a touch failure below must not re-queue them
            if touches:
                services.bindings_touch(touches=touches)
        except DatabaseError as exc:
            self._db_failed(exc, "write-behind")
            with self._lock:
                for key, value in unwritten.items():
                    self._unwritten.setdefault(key, value)
                for key, (count, seen) in touches.items():
                    old_count, _ = self._touches.get(key, (0, seen))
                    self._touches[key] = (old_count + count, seen)
            return
        self._db_back()

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._unwritten)
