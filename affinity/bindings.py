"""The bindings as runproxy holds them: an in-memory hot cache in front of the affinity
database, write-behind of per-instance updates, and a degraded mode that keeps
routing when the database is unreachable or its disk is full.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, DataError, IntegrityError, close_old_connections

from affinity import selectors, services
from affinity.journal import BindingJournal, Key
from routing.dicom.uids import shown

logger = logging.getLogger("synthiq.affinity")

DB_RETRY_SECONDS = 1.0
# Instance locations waiting for the database at most (a long outage must not grow memory).
INSTANCES_PENDING_LIMIT = 200_000


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


# Errors of a row's data (a value too long, a constraint), not of the database: the row is
# dropped and logged, the rest written, and the database is not marked unavailable.
ROW_ERRORS = (DataError, IntegrityError)


def _row_by_row(what: str, rows: dict[Key, Any], write: Callable[[dict[Key, Any]], Any]) -> dict[Key, Any]:
    """Write ``rows`` one at a time after their batch failed on a row's data: returns what
    each write returned, for the rows written; each refused row is logged and dropped."""
    done = {}
    for key, value in rows.items():
        try:
            done[key] = write({key: value})
        except ROW_ERRORS as exc:
            logger.error("pool=%s study/instance=%s: %s refused by the database and dropped: %s", key[0],
                         shown(key[1]), what, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return done


class Bindings:
    def __init__(self, *, window_hours: float, max_cache_entries: int = 500_000,
                 journal: BindingJournal | None = None):
        self.cache = HotCache(max_entries=max_cache_entries, window_seconds=window_hours * 3600)
        self.window_hours = window_hours
        self._lock = threading.Lock()
        self._touches: dict[Key, tuple[int, dt.datetime]] = {}
        # (pool, SOP Instance UID) -> (backend, study, when): written behind, like touches.
        self._instances: dict[Key, tuple[str, str, dt.datetime]] = {}
        # Bindings decided while the database was unavailable, written once it is back
        # (and those a previous process on this host left in the journal).
        self.journal = journal
        self._unwritten: dict[Key, tuple[str, dt.datetime]] = journal.start() if journal else {}
        self.db_ok = True
        self.db_error = ""
        self._retry_at = 0.0

    # -- state of the database ------------------------------------------------
    def _db_failed(self, exc: Exception, what: str) -> None:
        if self.db_ok:
            logger.error("affinity database unavailable during %s: %s (routing continues from memory; new "
                         "studies are placed by a hash of their UID until it is back)", what, exc)
        self.db_ok, self.db_error = False, f"{type(exc).__name__}: {exc}"
        self._retry_at = time.monotonic() + DB_RETRY_SECONDS

    def _db_usable(self) -> bool:
        """While the database is down, route misses do not each wait on it: it is tried
        again after DB_RETRY_SECONDS (and by every flush, which writes what was pending)."""
        return self.db_ok or time.monotonic() >= self._retry_at

    def _db_back(self) -> None:
        if not self.db_ok:
            logger.warning("affinity database reachable again")
            if self.journal:
                self.journal.forget()
        self.db_ok, self.db_error = True, ""

    # -- the hot path ---------------------------------------------------------
    def cached(self, key: Key) -> str | None:
        return self.cache.get(key, time.monotonic())

    def lookup(self, key: Key) -> str | None:
        """The study's binding (after a cache miss): one not yet written wins, then the database."""
        return self.lookup_many([key]).get(key)

    def lookup_many(self, keys: list[Key]) -> dict[Key, str]:
        """Bindings of several studies in one query; bindings decided while the database
        was away (not yet written) win. When the database cannot answer, the journal does."""
        with self._lock:
            found = {key: self._unwritten[key][0] for key in keys if key in self._unwritten}
        rest = [key for key in keys if key not in found]
        if not rest:
            return found
        if self._db_usable():
            try:
                close_old_connections()
                from_db = selectors.bindings_backends(keys=rest)
            except DatabaseError as exc:
                self._db_failed(exc, "lookup")
            else:
                if self.journal:
                    self.journal.record(from_db)
                return found | from_db
        if self.journal:
            found |= self.journal.lookup(rest)
        return found

    def claim(self, key: Key, backend_id: str, *, replaces: str | None = None) -> str:
        """Make ``backend_id`` the study's binding unless another process got there
        first; returns the binding that holds. Written before the first instance is
        forwarded, or kept in memory if the database cannot take it now."""
        if replaces:
            return self._rebind(key, backend_id, replaces)
        return self.claim_many({key: backend_id})[key]

    def claim_many(self, claims: dict[Key, str], *, fallback: Callable[[Key], str] | None = None) -> dict[Key, str]:
        """Claim several new studies at once (see ``claim``). When the database cannot
        take them, each study goes to ``fallback(key)`` (default: the backend claimed),
        kept in memory and written once the database is back."""
        if not claims:
            return {}
        now = dt.datetime.now(dt.UTC)
        held: dict[Key, str] | None = None
        if self._db_usable():
            try:
                close_old_connections()
                try:
                    held = services.bindings_claim_many(claims=claims, now=now)
                except ROW_ERRORS:
                    one_by_one = _row_by_row("binding", claims, lambda one: services.bindings_claim_many(
                        claims=one, now=now))
                    # A study whose binding cannot be written goes where it was placed, unbound.
                    held = {key: one_by_one[key][key] if key in one_by_one else backend_id
                            for key, backend_id in claims.items()}
            except DatabaseError as exc:
                self._db_failed(exc, "claim")
            else:
                self._db_back()
        if held is None:
            held = {key: fallback(key) if fallback else backend_id for key, backend_id in claims.items()}
            with self._lock:
                for key, backend_id in held.items():
                    self._unwritten[key] = (backend_id, now)
        if self.journal:
            self.journal.record(held, pending=not self.db_ok)
        stamp = time.monotonic()
        for key, backend_id in held.items():
            self.cache.put(key, backend_id, stamp)
        return held

    def _rebind(self, key: Key, backend_id: str, replaces: str) -> str:
        try:
            close_old_connections()
            bound = services.binding_rebind(pool_id=key[0], study_uid=key[1], old_backend_id=replaces,
                                            new_backend_id=backend_id)
        except DatabaseError as exc:
            self._db_failed(exc, "rebind")
            bound = backend_id
            with self._lock:
                self._unwritten[key] = (backend_id, dt.datetime.now(dt.UTC))
        else:
            self._db_back()
        if self.journal:
            self.journal.record({key: bound}, pending=not self.db_ok)
        self.cache.put(key, bound, time.monotonic())
        return bound

    def note_instance(self, *, pool_id: str, sop_instance_uid: str, backend_id: str, study_uid: str) -> None:
        with self._lock:
            if len(self._instances) >= INSTANCES_PENDING_LIMIT:
                return  # the database has been away long: keep memory bounded (commitment then asks all)
            self._instances[(pool_id, sop_instance_uid)] = (backend_id, study_uid, dt.datetime.now(dt.UTC))

    def instance_backends(self, *, pool_id: str, sop_instance_uids: list[str]) -> dict[str, str]:
        """Where each of these instances was relayed (not yet written ones first)."""
        with self._lock:
            found = {sop: self._instances[(pool_id, sop)][0] for sop in sop_instance_uids
                     if (pool_id, sop) in self._instances}
        rest = [sop for sop in sop_instance_uids if sop not in found]
        if rest and self._db_usable():
            try:
                close_old_connections()
                found |= selectors.instance_backends(pool_id=pool_id, sop_instance_uids=rest)
            except DatabaseError as exc:
                self._db_failed(exc, "instance lookup")
        return found

    def touch(self, key: Key) -> None:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            count, _ = self._touches.get(key, (0, now))
            self._touches[key] = (count + 1, now)

    # -- background -----------------------------------------------------------
    def flush(self) -> None:
        """Write pending bindings, then batched touches and instance locations. Safe to
        call repeatedly."""
        with self._lock:
            unwritten, self._unwritten = self._unwritten, {}
            touches, self._touches = self._touches, {}
            instances, self._instances = self._instances, {}
        written: dict[Key, str] = {}
        try:
            close_old_connections()
            for key, (backend_id, first_seen) in unwritten.items():
                try:
                    bound = written[key] = services.binding_claim(
                        pool_id=key[0], study_uid=key[1], backend_id=backend_id, now=first_seen
                    )
                except (ObjectDoesNotExist, *ROW_ERRORS) as exc:  # its pool or backend is gone, or the row is bad
                    logger.error("pool=%s study=%s deferred binding to %s dropped: %s", key[0], shown(key[1]),
                                 backend_id, "that pool or backend is not in the database"
                                 if isinstance(exc, ObjectDoesNotExist) else f"refused by the database: {exc}")
                    continue
                if bound != backend_id:
                    logger.error(
                        "pool=%s study=%s was bound to %s by another process while the database "
                        "was down; this process sent it to %s: the study may be split",
                        key[0], key[1], bound, backend_id,
                    )
                    self.cache.put(key, bound, time.monotonic())
                else:
                    logger.info("pool=%s study=%s deferred binding to %s written", key[0], key[1], bound)
            unwritten = {}  # all written: a failure below must not re-queue them
            if self.journal:
                self.journal.record(written)
            if touches:
                try:
                    services.bindings_touch(touches=touches)
                except ROW_ERRORS:
                    _row_by_row("instance count", touches, lambda one: services.bindings_touch(touches=one))
            touches = {}
            if instances:
                try:
                    services.instances_record(locations=instances)
                except ROW_ERRORS:
                    _row_by_row("instance location", instances, lambda one: services.instances_record(locations=one))
        except DatabaseError as exc:
            self._db_failed(exc, "write-behind")
            with self._lock:
                for key, value in unwritten.items():
                    self._unwritten.setdefault(key, value)
                for key, (count, seen) in touches.items():
                    old_count, _ = self._touches.get(key, (0, seen))
                    self._touches[key] = (old_count + count, seen)
                for key, where in instances.items():
                    self._instances.setdefault(key, where)
            return
        self._db_back()

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._unwritten)
