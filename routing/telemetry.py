"""Per-process counters and recent decisions, published to the database in batches
(never a write per C-STORE) so the web process can aggregate several proxies."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import socket
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, transaction
from django.db.models import F, Model
from django.db.models.functions import Greatest

from routing import counters as names
from routing.audit.trail import NULL_TRAIL
from routing.counters import Snapshot
from routing.dicom.sop_classes import SERVICE_CLASSES
from routing.dicom.status import status_class
from routing.dicom.uids import uid_problem
from routing.models import FailedOperation, ProxyProcess, RejectedAssociation, RoutingDecision
from synthiq_project.repeating import Repeating

logger = logging.getLogger("synthiq.routing")

RECENT_DECISIONS = 200
# Upper bounds (seconds) of the forward-latency histogram buckets; one more slot counts
# everything slower (+Inf). Fixed so that several processes' counts add up bucket by bucket.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The rate history: cumulative counters sampled on wall-clock slots of
# settings.SYNTHIQ_RATE_SAMPLE_SECONDS (the same slots in every process, so the web process
# can add them up), the last RATE_SAMPLES of them: 15 minutes at the default 10 s.
RATE_SAMPLES = 90
# Failed operations: at most this many wait in memory for the next publish (the database may
# be away), and the table keeps the newest FAILURES_KEPT.
FAILURES_PENDING = 1000
FAILURES_KEPT = 500
# Rejected associations are counted per (pool, reason, calling AE, called AE, source address):
# at most this many distinct ones between two publishes (a scan from many addresses
# counts the rest under one row of source "*"), and the table keeps the REJECTIONS_KEPT seen last.
REJECTIONS_PENDING = 200
REJECTIONS_KEPT = 500
# The reason a refused presentation context is recorded under: the association was accepted,
# a service it asked for was not (not an A-ASSOCIATE-RJ, so not among the rejected.* counters).
CONTEXTS_REFUSED = "presentation-context"


def _printable(value: str, limit: int) -> str:
    """A peer's text as it may be stored and shown: control characters replaced, cut to ``limit``."""
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in str(value)[:limit]).strip()


def _uid(value: str) -> str:
    """A UID a peer sent, kept only if it is one (an invalid one is in the failure's comment)."""
    value = (value or "").rstrip("\x00 ")
    return value if value and uid_problem(value) is None else ""


def services_view(*, switches: dict[str, bool], passed: set[str],
                  backends: dict[str, frozenset[str] | None]) -> dict[str, dict[str, Any]]:
    """Which of a pool's non-storage services SynthIQ passes, and why not: per service
    (find, move, get, storage_commitment), its config switch, whether it is passed, the
    backends that offer it and those that could not be asked (None)."""
    out = {}
    for name, classes in SERVICE_CLASSES.items():
        out[name] = {
            "switched_on": bool(switches.get(name)),
            "passed": any(uid in passed for uid in classes),
            "offered_by": sorted(b for b, offered in backends.items()
                                 if offered is not None and any(uid in offered for uid in classes)),
            "not_asked": sorted(b for b, offered in backends.items() if offered is None),
        }
    return out


def _rows_write(model: type[Model], rows: list[Model], what: Callable[[Any], str]) -> None:
    """Write rows in one statement; if a row's data is refused (DataError, IntegrityError),
    one by one, dropping and logging the refused rows (``what`` names one): one bad row must
    not stop every later publish. A connection failure (other DatabaseError) propagates."""
    try:
        with transaction.atomic():
            model.objects.bulk_create(rows)
        return
    except (DataError, IntegrityError):
        pass
    for row in rows:
        try:
            with transaction.atomic():
                row.save(force_insert=True)
        except (DataError, IntegrityError) as exc:
            logger.error("%s not recorded: %s", what(row), str(exc).splitlines()[0] if str(exc) else exc)


def _decision_named(d: RoutingDecision) -> str:
    return f"routing decision pool={d.pool_id} study={d.study_uid[:80]!r} backend={d.backend_id}"


def _failure_named(f: FailedOperation) -> str:
    return f"failed operation pool={f.pool_id} backend={f.backend_id} status=0x{f.status:04X}"


def _failures_trim() -> None:
    """Only the newest FAILURES_KEPT failed operations stay."""
    oldest_kept = list(FailedOperation.objects.order_by("-at_utc", "-id")
                       .values_list("at_utc", flat=True)[FAILURES_KEPT - 1:FAILURES_KEPT])
    if oldest_kept:
        FailedOperation.objects.filter(at_utc__lt=oldest_kept[0]).delete()


def _rejections_write(rejections: dict[tuple[str, str, str, str, str], dict[str, Any]]) -> None:
    """Add counts to each (pool, reason, calling AE, called AE, source) row, race-free with
    the other processes: a conditional update, else an insert the unique constraint guards
    (losing the race means updating after all). A row refused (its pool gone) is dropped.
    Each one written leaves ``rejections``: what is left when the database fails stays counted."""
    for (pool_id, reason, calling_ae, called_ae, source_ip), seen in list(rejections.items()):
        key = {"pool_id": pool_id, "reason": reason, "calling_ae": calling_ae, "called_ae": called_ae,
               "source_ip": source_ip}
        rows = RejectedAssociation.objects.filter(**key)
        update = {"count": F("count") + seen["count"], "last_seen_utc": Greatest("last_seen_utc", seen["last"]),
                  "detail": seen["detail"]}
        try:
            with transaction.atomic():
                if not rows.update(**update):
                    RejectedAssociation.objects.create(**key, count=seen["count"], first_seen_utc=seen["first"],
                                                       last_seen_utc=seen["last"], detail=seen["detail"])
        except (DataError, IntegrityError):
            try:
                with transaction.atomic():
                    rows.update(**update)
            except (DataError, IntegrityError) as exc:
                logger.error("rejected association pool=%s reason=%s source_ip=%s not recorded: %s", pool_id,
                             reason, source_ip, str(exc).splitlines()[0] if str(exc) else exc)
        del rejections[(pool_id, reason, calling_ae, called_ae, source_ip)]


def _rejections_trim() -> None:
    """Only the REJECTIONS_KEPT rows seen last stay."""
    last_kept = list(RejectedAssociation.objects.order_by("-last_seen_utc", "-id")
                     .values_list("last_seen_utc", flat=True)[REJECTIONS_KEPT - 1:REJECTIONS_KEPT])
    if last_kept:
        RejectedAssociation.objects.filter(last_seen_utc__lt=last_kept[0]).delete()


class Telemetry:
    def __init__(self, *, process_id: str | None = None, sample_seconds: float | None = None):
        self.process_id = process_id or f"{socket.gethostname()}:{os.getpid()}"
        self.started = dt.datetime.now(dt.UTC)
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.per_backend: dict[str, Counter[str]] = {}
        # backend id -> non-cumulative bucket counts (len(LATENCY_BUCKETS) + 1)
        self.latency: dict[str, list[int]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_DECISIONS)
        self._unwritten: list[RoutingDecision] = []
        self._publish_failing = Repeating(logger, "could not publish proxy status")
        self._failures: deque[FailedOperation] = deque(maxlen=FAILURES_PENDING)
        self._rejections: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
        self.open_associations = 0
        self.sample_seconds = sample_seconds or settings.SYNTHIQ_RATE_SAMPLE_SECONDS
        self.samples: deque[dict[str, Any]] = deque(maxlen=RATE_SAMPLES)
        self.sample()  # everything is zero at the start: what arrives before the first publish counts
        # The audit trail (routing.audit): the relay reports through ``telemetry.audit``.
        self.audit: Any = NULL_TRAIL

    def _backend(self, backend_id: str) -> Counter[str]:
        return self.per_backend.setdefault(backend_id, Counter())

    def association_opened(self) -> None:
        with self._lock:
            self.open_associations += 1
            self.counters["associations"] += 1

    def association_closed(self) -> None:
        with self._lock:
            self.open_associations -= 1

    def operation(self, *, service: str, status: int) -> None:
        """A non-storage operation ended (C-FIND, C-MOVE, C-GET, N-ACTION), by final status class."""
        with self._lock:
            self.counters[names.operation(service, status_class(status))] += 1

    def held(self) -> None:
        """An association was held while its study's backend was unreachable."""
        with self._lock:
            self.counters["held"] += 1

    def association_rejected(self, reason: str, *, pool_id: str = "", source_ip: str = "", calling_ae: str = "",
                             called_ae: str = "", detail: str = "") -> None:
        """An A-ASSOCIATE-RQ answered with A-ASSOCIATE-RJ (or a connection closed before one
        could be read), by reason (called-ae, calling-ae, ...); with the pool, also who and
        from where, for the rejected associations list."""
        with self._lock:
            self.counters[names.rejected(reason)] += 1
            if pool_id:
                self._rejection(pool_id, reason, source_ip, calling_ae, called_ae, detail)

    def contexts_refused(self, *, pool_id: str, source_ip: str, calling_ae: str, called_ae: str,
                         sop_classes: list[str]) -> None:
        """An association accepted with some of its presentation contexts refused: the
        services it asked for that this pool does not pass."""
        with self._lock:
            self.counters["contexts_refused"] += 1
            self._rejection(pool_id, CONTEXTS_REFUSED, source_ip, calling_ae, called_ae, ", ".join(sop_classes))

    def _rejection(self, pool_id: str, reason: str, source_ip: str, calling_ae: str, called_ae: str,
                   detail: str) -> None:
        now = dt.datetime.now(dt.UTC)
        key = (pool_id, reason[:32], _printable(calling_ae, 16), _printable(called_ae, 16), source_ip[:64])
        if key not in self._rejections and len(self._rejections) >= REJECTIONS_PENDING:
            key = (pool_id, reason[:32], "", "", "*")
            detail = "more distinct callers than are recorded one by one"
        seen = self._rejections.setdefault(key, {"count": 0, "first": now, "last": now, "detail": ""})
        seen["count"] += 1
        seen["last"] = now
        seen["detail"] = _printable(detail, 255)

    def store_failed(self, *, pool_id: str, calling_ae: str, source_ip: str, study_uid: str, sop_instance_uid: str,
                     backend_id: str | None, status: int, comment: str, by_backend: bool,
                     service: str = "C-STORE") -> None:
        """An operation (a C-STORE unless ``service`` says otherwise) answered with a failure
        status, the backend's (``by_backend``) or SynthIQ's own."""
        with self._lock:
            self._failures.append(FailedOperation(
                at_utc=dt.datetime.now(dt.UTC), pool_id=pool_id, service=service[:16],
                calling_ae=_printable(calling_ae, 16), source_ip=source_ip[:64], study_uid=_uid(study_uid),
                sop_instance_uid=_uid(sop_instance_uid), backend_id=(backend_id or "")[:64], status=status & 0xFFFF,
                comment=_printable(comment, 128),
                origin=FailedOperation.Origin.BACKEND if by_backend else FailedOperation.Origin.SYNTHIQ,
                process=self.process_id,
            ))

    def invalid_input(self, *, service: str, reason: str) -> None:
        """A request refused for an identifier that is not a valid UID (nothing of it kept)."""
        with self._lock:
            self.counters[names.invalid(service, reason)] += 1

    def backend_violation(self, backend_id: str) -> None:
        """A backend's response that did not answer the request (another Message ID, SOP
        Class or SOP Instance): the requester was told it failed, the backend aborted."""
        with self._lock:
            self.counters["backend_violations"] += 1
            self._backend(backend_id)["violations"] += 1

    def connection_refused(self) -> None:
        with self._lock:
            self.counters["connections_refused"] += 1

    def routed(self, reason: str) -> None:
        with self._lock:
            self.counters[names.routed(reason)] += 1

    def decided(self, *, pool_id: str, study_uid: str, backend_id: str, reason: str,
                calling_ae: str, source_ip: str, modality: str) -> None:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            self.counters[names.routed(reason)] += 1
            self.counters["decisions"] += 1
            self.recent.appendleft(
                {"at": now.isoformat(), "pool": pool_id, "study_uid": study_uid,
                 "backend": backend_id, "reason": reason, "calling_ae": calling_ae}
            )
            self._unwritten.append(
                RoutingDecision(at_utc=now, pool_id=pool_id, backend_id=backend_id, study_uid=study_uid,
                                reason=reason, calling_ae=calling_ae, source_ip=source_ip,
                                modality=modality, process=self.process_id)
            )

    def forwarded(self, backend_id: str, status: int, seconds: float, *, nbytes: int = 0) -> None:
        """The backend answered a C-STORE whose data set (``nbytes``) was relayed to it."""
        with self._lock:
            outcome = names.stored(status_class(status))
            self.counters[outcome] += 1
            self.counters["received"] += 1
            self.counters["bytes"] += nbytes
            b = self._backend(backend_id)
            b[outcome] += 1
            b["forwarded"] += 1
            b["bytes"] += nbytes
            b["forward_seconds"] += seconds
            buckets = self.latency.get(backend_id)
            if buckets is None:
                buckets = self.latency[backend_id] = [0] * (len(LATENCY_BUCKETS) + 1)
            # bisect_left: a value equal to a bound belongs in that bucket (Prometheus `le`).
            buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def forward_failed(self, backend_id: str | None, status: int) -> None:
        with self._lock:
            outcome = names.stored(status_class(status))
            self.counters[outcome] += 1
            self.counters["received"] += 1
            self.counters["failed"] += 1
            if backend_id:
                self._backend(backend_id)[outcome] += 1

    def sample(self, *, now: float | None = None) -> None:
        """Record the cumulative counters once per wall-clock slot (the first call in a new
        slot does); the web process turns consecutive samples into rates."""
        now = time.time() if now is None else now
        slot = math.floor(now / self.sample_seconds) * self.sample_seconds
        with self._lock:
            if self.samples and self.samples[-1]["t"] >= slot:
                return
            self.samples.append({
                "t": slot,
                "at": now,
                "received": self.counters["received"],
                "failed": names.Counts(self.counters).failed(),
                "bytes": self.counters["bytes"],
                "backends": {k: {"forwarded": v["forwarded"], "bytes": v["bytes"]}
                             for k, v in self.per_backend.items()},
            })

    def snapshot(self) -> Snapshot:
        with self._lock:
            return {
                "counters": dict(self.counters),
                "backends": {k: dict(v) for k, v in self.per_backend.items()},
                "open_associations": self.open_associations,
                "latency_buckets": list(LATENCY_BUCKETS),
                "latency": {k: list(v) for k, v in self.latency.items()},
                "recent": list(self.recent)[:50],
                "rates": {"interval_seconds": self.sample_seconds, "samples": list(self.samples)},
            }

    def publish(self, *, extra: Snapshot, listeners: list[dict[str, Any]], stopped: bool = False) -> None:
        """Write the decisions made since the last call and this process's counters."""
        with self._lock:
            decisions, self._unwritten = self._unwritten, []
            failures, rejections = list(self._failures), self._rejections
            self._failures.clear()
            self._rejections = {}
        self.sample()
        snapshot = self.snapshot() | extra
        try:
            close_old_connections()
            _rows_write(RoutingDecision, decisions, _decision_named)
            decisions = []  # written: a failure below must not queue them again
            if failures:
                _rows_write(FailedOperation, failures, _failure_named)
                failures = []
                _failures_trim()
            if rejections:
                _rejections_write(rejections)
                _rejections_trim()
            with transaction.atomic():
                ProxyProcess.objects.update_or_create(
                    id=self.process_id,
                    defaults={"started_utc": self.started, "updated_utc": dt.datetime.now(dt.UTC),
                              "counters": snapshot, "listeners": listeners, "stopped": stopped},
                )
            self._publish_failing.ok()
        except DatabaseError as exc:
            self._publish_failing.failed(exc)
            with self._lock:
                # Keep a bounded backlog; the counters themselves are never lost.
                self._unwritten = (decisions + self._unwritten)[-10_000:]
                self._failures = deque(failures + list(self._failures), maxlen=FAILURES_PENDING)  # newest kept
                for key, seen in rejections.items():
                    mine = self._rejections.setdefault(key, seen)
                    if mine is not seen:
                        mine["count"] += seen["count"]
                        mine["first"] = min(mine["first"], seen["first"])
