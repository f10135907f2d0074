"""Heartbeats: one round per pool probes every enabled backend and records what it saw.

The same functions run inline in runproxy (a background thread) and from Celery beat;
routing reads the rows (health.selectors.backend_is_healthy), so it does not care which.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Q

from health.models import BackendHealth, HeartbeatRound
from health.probes import ProbeError, Reading, Target, probe_run
from health.selectors import backend_health_rows, heartbeat_targets

logger = logging.getLogger("synthiq.health")

# Probes of one round run at once so one slow backend does not delay the others; the
# bound keeps a large pool from opening hundreds of sockets in one burst.
MAX_PROBE_THREADS = 16
# Never wait longer than this for one probe, whatever the interval.
MAX_PROBE_SECONDS = 5.0
# A backend that keeps failing its heartbeat is logged again this often (not every interval).
FAILURE_REMINDER_SECONDS = 300


@dataclass(frozen=True)
class HeartbeatPolicy:
    interval_seconds: float
    timeout_seconds: float
    study_cache_window_hours: float

    @property
    def probe_timeout(self) -> float:
        """A probe must finish inside its interval, or rounds would pile up."""
        return max(0.2, min(MAX_PROBE_SECONDS, self.interval_seconds * 0.8))


@dataclass(frozen=True)
class Outcome:
    backend_id: str
    reading: Reading | None
    error: ProbeError | None
    seconds: float


def heartbeat_runner_name(*, kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


def heartbeat_policy_read() -> HeartbeatPolicy:
    """The heartbeat policy of a runner with no config object of its own (Celery)."""
    from pools.selectors import config_file_settings

    site = config_file_settings()
    return HeartbeatPolicy(site["heartbeat_interval_seconds"], site["heartbeat_timeout_seconds"],
                           site["study_cache_window_hours"])


def _probe(target: Target, timeout: float) -> Outcome:
    started = time.monotonic()
    try:
        reading = probe_run(target=target, timeout=timeout)
        return Outcome(target.backend_id, reading, None, time.monotonic() - started)
    except ProbeError as exc:
        return Outcome(target.backend_id, None, exc, time.monotonic() - started)


def heartbeat_probe_all(*, targets: list[Target], timeout: float) -> list[Outcome]:
    """Probe every target at once; a probe still running after its timeout (plus slack
    for connection set-up) is a failed heartbeat and is not waited for."""
    if not targets:
        return []
    pool = ThreadPoolExecutor(max_workers=min(MAX_PROBE_THREADS, len(targets)), thread_name_prefix="probe")
    try:
        futures = {pool.submit(_probe, t, timeout): t for t in targets}
        wait(futures, timeout=timeout + 1.0)
        outcomes = []
        for future, target in futures.items():
            if future.done():
                outcomes.append(future.result())
            else:
                error = ProbeError(f"probe still running after {timeout + 1.0:.1f}s")
                outcomes.append(Outcome(target.backend_id, None, error, timeout + 1.0))
        return outcomes
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _upsert(model, *, key: dict, fields: dict, stamp: str) -> bool:
    """Update, or insert if absent, unless the row already holds a result stamped later
    (``stamp`` names the time field): an older result never overwrites a newer one, even
    when two runners (a slow round and the next, two hosts, inline and Celery) finish out
    of order. Never check-then-save. Returns whether this result was written."""
    newer_or_none = Q(**{f"{stamp}__lt": fields[stamp]}) | Q(**{f"{stamp}__isnull": True})
    if model.objects.filter(**key).filter(newer_or_none).update(**fields):
        return True
    if model.objects.filter(**key).exists():
        return False
    try:
        with transaction.atomic():
            model.objects.create(**key, **fields)
        return True
    except IntegrityError:
        return bool(model.objects.filter(**key).filter(newer_or_none).update(**fields))


def _log_failure(*, outcome: Outcome, pool_id: str, mode: str, previous: BackendHealth | None, error: str,
                 now: dt.datetime) -> None:
    """A failed heartbeat is logged when it starts failing or its cause changes, then as a
    reminder every FAILURE_REMINDER_SECONDS while it keeps failing, not every interval."""
    failing_before = previous is not None and bool(previous.last_error) and (
        previous.last_ok_utc is None or previous.last_check_utc > previous.last_ok_utc)
    if failing_before and previous is not None and previous.last_error == error:
        since = previous.last_ok_utc or previous.last_check_utc
        before = (previous.last_check_utc - since).total_seconds() // FAILURE_REMINDER_SECONDS
        if (now - since).total_seconds() // FAILURE_REMINDER_SECONDS == before:
            return
        logger.warning("heartbeat still failing backend=%s pool=%s mode=%s (for %.0f min): %s", outcome.backend_id,
                       pool_id, mode, (now - since).total_seconds() / 60, error)
        return
    logger.warning("heartbeat failed backend=%s pool=%s mode=%s in %.0f ms: %s", outcome.backend_id,
                   pool_id, mode, outcome.seconds * 1000, error)


def backend_health_record(
    *, outcome: Outcome, pool_id: str, mode: str, previous: BackendHealth | None,
    now: dt.datetime, timeout_seconds: float,
) -> bool:
    """Write one heartbeat's result; returns whether the backend is healthy now.

    A backend that answers "not ok" is unhealthy at once: it said so. Silence or a
    broken answer may be a blip, so the backend stays in Tier 2 (on its last reported
    load) until HeartbeatTimeoutSeconds have passed without a good heartbeat.
    """
    was_healthy = bool(previous and previous.healthy)
    if outcome.reading is not None:
        reading = outcome.reading
        if reading.load_note:
            logger.warning("backend=%s pool=%s mode=%s depth=%s: %s", outcome.backend_id, pool_id, mode,
                           reading.queue_depth, reading.load_note)
        fields = {"healthy": True, "load": reading.load, "queue_depth": reading.queue_depth,
                  "capacity": reading.capacity, "last_check_utc": now, "last_ok_utc": now,
                  "last_error": reading.load_note, "detail": reading.detail}
        healthy = True
        logger.debug("heartbeat ok backend=%s pool=%s load=%s in %.0f ms", outcome.backend_id, pool_id,
                     reading.load, outcome.seconds * 1000)
    else:
        assert outcome.error is not None
        last_ok = previous.last_ok_utc if previous else None
        within = last_ok is not None and (now - last_ok).total_seconds() <= timeout_seconds
        healthy = was_healthy and within and not outcome.error.refused
        error = str(outcome.error)[:500]
        fields = {"healthy": healthy, "last_check_utc": now, "last_error": error}
        _log_failure(outcome=outcome, pool_id=pool_id, mode=mode, previous=previous, error=error, now=now)
    if not _upsert(BackendHealth, key={"backend_id": outcome.backend_id}, fields=fields, stamp="last_check_utc"):
        logger.info("heartbeat of backend=%s pool=%s from %s dropped: a later result is already recorded",
                    outcome.backend_id, pool_id, now.isoformat())
        return healthy
    if healthy != was_healthy:
        if healthy:
            logger.info("backend=%s pool=%s is healthy", outcome.backend_id, pool_id)
        else:
            logger.warning("backend=%s pool=%s is UNHEALTHY: leaves least-busy routing (%s)",
                           outcome.backend_id, pool_id, outcome.error)
    return healthy


def heartbeat_round(*, pool_id: str, policy: HeartbeatPolicy, runner: str) -> dict[str, bool]:
    """One heartbeat round for a pool: probe all enabled backends, record each result and
    the round itself. Returns backend id -> healthy."""
    close_old_connections()
    targets = heartbeat_targets(pool_id=pool_id)
    modes = {t.backend_id: t.health.mode for t in targets}
    started = time.monotonic()
    outcomes = heartbeat_probe_all(targets=targets, timeout=policy.probe_timeout)
    now = dt.datetime.now(dt.UTC)
    previous = backend_health_rows(backend_ids=list(modes))
    result: dict[str, bool] = {}
    with transaction.atomic():
        for outcome in outcomes:
            result[outcome.backend_id] = backend_health_record(
                outcome=outcome, pool_id=pool_id, mode=modes[outcome.backend_id],
                previous=previous.get(outcome.backend_id), now=now,
                timeout_seconds=policy.timeout_seconds,
            )
        _upsert(HeartbeatRound, key={"pool_id": pool_id}, fields={"completed_utc": now, "runner": runner},
                stamp="completed_utc")
    logger.debug("heartbeat round pool=%s backends=%d healthy=%d in %.0f ms by %s", pool_id, len(outcomes),
                 sum(result.values()), (time.monotonic() - started) * 1000, runner)
    return result


def heartbeat_run_all(
    *, policy: HeartbeatPolicy, runner: str, pool_ids: list[str] | None = None
) -> dict[str, dict[str, bool]]:
    """A round for each pool (every enabled pool in the database when none are named)."""
    from pools.selectors import pools_enabled

    close_old_connections()
    if pool_ids is None:
        pool_ids = list(pools_enabled().values_list("id", flat=True))
    results = {}
    for pool_id in pool_ids:
        try:
            results[pool_id] = heartbeat_round(pool_id=pool_id, policy=policy, runner=runner)
        except Exception:  # one pool's database trouble must not starve the others
            logger.exception("heartbeat round for pool=%s failed", pool_id)
    return results
