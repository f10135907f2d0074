"""Writes to the affinity store. All are race-free across processes sharing one database."""

from __future__ import annotations

import datetime as dt
import logging

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest

from affinity import selectors
from affinity.models import Binding, InstanceLocation

logger = logging.getLogger("synthiq.affinity")


def binding_claim(*, pool_id: str, study_uid: str, backend_id: str, now: dt.datetime) -> str:
    """Insert the binding if absent and return the backend the study is bound to.

    When several processes claim the same new study at once, the unique constraint
    lets exactly one insert win; the others read and follow the winner.
    """
    try:
        with transaction.atomic():
            Binding.objects.create(
                pool_id=pool_id,
                study_uid=study_uid,
                backend_id=backend_id,
                first_seen_utc=now,
                last_seen_utc=now,
                instance_count=0,
            )
        return backend_id
    except IntegrityError:
        return Binding.objects.values_list("backend_id", flat=True).get(
            pool_id=pool_id, study_uid=study_uid
        )


def bindings_claim_many(*, claims: dict[tuple[str, str], str], now: dt.datetime) -> dict[tuple[str, str], str]:
    """``binding_claim`` for many new studies at once: one multi-row insert that skips
    the keys another process holds already, then one read of who holds each key. Under
    load this is what keeps binding claims in the thousands per second."""
    if not claims:
        return {}
    Binding.objects.bulk_create(
        [Binding(pool_id=pool_id, study_uid=study_uid, backend_id=backend_id, first_seen_utc=now,
                 last_seen_utc=now, instance_count=0)
         for (pool_id, study_uid), backend_id in claims.items()],
        ignore_conflicts=True,
    )
    held = selectors.bindings_backends(keys=list(claims))
    missing = set(claims) - set(held)
    if missing:  # deleted between the two statements (a purge): claim those one by one
        for pool_id, study_uid in missing:
            held[(pool_id, study_uid)] = binding_claim(pool_id=pool_id, study_uid=study_uid,
                                                       backend_id=claims[(pool_id, study_uid)], now=now)
    return held


def binding_rebind(*, pool_id: str, study_uid: str, old_backend_id: str, new_backend_id: str) -> str:
    """Move a binding whose backend left the pool. Conditional, so a concurrent rebind
    by another process wins cleanly; returns the backend the study is bound to now."""
    moved = Binding.objects.filter(
        pool_id=pool_id, study_uid=study_uid, backend_id=old_backend_id
    ).update(backend_id=new_backend_id)
    if moved:
        logger.warning(
            "pool=%s study=%s rebound %s -> %s (old backend no longer enabled in the pool)",
            pool_id, study_uid, old_backend_id, new_backend_id,
        )
        return new_backend_id
    return Binding.objects.values_list("backend_id", flat=True).get(pool_id=pool_id, study_uid=study_uid)


def bindings_touch(*, touches: dict[tuple[str, str], tuple[int, dt.datetime]]) -> None:
    """Write-behind of instance counts and last-seen times, one transaction per batch."""
    with transaction.atomic():
        for (pool_id, study_uid), (count, last_seen) in touches.items():
            Binding.objects.filter(pool_id=pool_id, study_uid=study_uid).update(
                instance_count=F("instance_count") + count,
                last_seen_utc=Greatest(F("last_seen_utc"), last_seen),
            )


# How often expired bindings are purged (by Celery beat, or by runproxy when heartbeats run inline).
BINDING_PURGE_SECONDS = 600.0


def instances_record(*, locations: dict[tuple[str, str], tuple[str, str, dt.datetime]]) -> None:
    """Write-behind of where relayed instances went: (pool, SOP Instance UID) ->
    (backend, study, seen), one multi-row insert; an instance already known keeps its row."""
    InstanceLocation.objects.bulk_create(
        [InstanceLocation(pool_id=pool_id, sop_instance_uid=sop_uid, backend_id=backend_id, study_uid=study_uid,
                          seen_utc=seen)
         for (pool_id, sop_uid), (backend_id, study_uid, seen) in locations.items()],
        ignore_conflicts=True, batch_size=500,
    )


def bindings_purge_expired(*, window_hours: float, now: dt.datetime) -> int:
    """Delete bindings (and instance locations) idle for longer than the study cache window."""
    cutoff = now - dt.timedelta(hours=window_hours)
    InstanceLocation.objects.filter(seen_utc__lt=cutoff).delete()
    deleted, _ = Binding.objects.filter(last_seen_utc__lt=cutoff).delete()
    if deleted:
        logger.info("purged %d bindings idle since before %s", deleted, cutoff.isoformat())
    return deleted


def binding_commit(*, pool_id: str, study_uid: str, backend_id: str, now: dt.datetime) -> bool:
    """Record that the bound backend durably committed the study (only that backend may)."""
    return (
        Binding.objects.filter(pool_id=pool_id, study_uid=study_uid, backend_id=backend_id).update(
            committed_utc=now
        )
        == 1
    )
