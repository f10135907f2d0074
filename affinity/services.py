"""Writes to the affinity store. All are race-free across processes sharing one database."""

from __future__ import annotations

import datetime as dt
import functools
import logging

from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Greatest

from affinity import selectors
from affinity.models import KEPT_VERDICTS, Adoption, AdoptionWindow, Binding, InstanceLocation

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


def bindings_claim_many(*, claims: dict[tuple[str, str], str], now: dt.datetime,
                        adopted: bool = False) -> dict[tuple[str, str], str]:
    """``binding_claim`` for many new studies at once: one multi-row insert that skips
    the keys another process holds already, then one read of who holds those. Under
    load this is what keeps binding claims in the thousands per second. ``adopted``: the
    rows inserted are marked learnt from the backends (adopt) in the same statement."""
    if not claims:
        return {}
    inserted = _insert_absent(claims=claims, now=now, adopted=adopted)
    if inserted is None:
        Binding.objects.bulk_create(
            [Binding(pool_id=pool_id, study_uid=study_uid, backend_id=backend_id, first_seen_utc=now,
                     last_seen_utc=now, instance_count=0, adopted=adopted)
             for (pool_id, study_uid), backend_id in sorted(claims.items())],  # key order: see _insert_absent
            ignore_conflicts=True,
        )
        inserted = set()
    held = {key: claims[key] for key in inserted}
    others = [key for key in claims if key not in inserted]
    if others:
        held |= selectors.bindings_backends(keys=others)
    missing = set(claims) - set(held)
    if missing:  # deleted between the two statements (a purge): claim those one by one
        for pool_id, study_uid in missing:
            held[(pool_id, study_uid)] = binding_claim(pool_id=pool_id, study_uid=study_uid,
                                                       backend_id=claims[(pool_id, study_uid)], now=now)
    return held


# PostgreSQL and SQLite (3.35+) say which rows an insert-if-absent wrote, so a batch of
# new studies is claimed in one statement, with no read-back; elsewhere (SQL Server) the
# rows are read back after a bulk insert.
_RETURNING_VENDORS = frozenset({"postgresql", "sqlite"})
_CLAIM_ROWS_PER_STATEMENT = 500


def _insert_absent(*, claims: dict[tuple[str, str], str], now: dt.datetime,
                   adopted: bool) -> set[tuple[str, str]] | None:
    """Insert the bindings no process holds yet; the keys this call inserted, or None
    where the database cannot tell."""
    if connection.vendor not in _RETURNING_VENDORS:
        return None
    qn = connection.ops.quote_name
    meta = Binding._meta
    pool, study, backend, first, last, count, learnt = (meta.get_field(name).column for name in (
        "pool", "study_uid", "backend", "first_seen_utc", "last_seen_utc", "instance_count", "adopted"))
    stamp = meta.get_field("first_seen_utc").get_db_prep_value(now, connection)
    # In key order: two processes claiming overlapping studies then take the unique index's
    # locks in one order, so one waits for the other instead of PostgreSQL breaking a deadlock
    # (the claimer it breaks off would take the database for down and place by hash).
    items = sorted(claims.items())
    inserted: set[tuple[str, str]] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(items), _CLAIM_ROWS_PER_STATEMENT):
            chunk = items[start:start + _CLAIM_ROWS_PER_STATEMENT]
            cursor.execute(
                f"INSERT INTO {qn(meta.db_table)} ({qn(pool)}, {qn(study)}, {qn(backend)}, {qn(first)}, {qn(last)}, "
                f"{qn(count)}, {qn(learnt)}) VALUES {', '.join(['(%s, %s, %s, %s, %s, 0, %s)'] * len(chunk))} "
                f"ON CONFLICT ({qn(pool)}, {qn(study)}) DO NOTHING RETURNING {qn(pool)}, {qn(study)}",
                [value for (pool_id, study_uid), backend_id in chunk
                 for value in (pool_id, study_uid, backend_id, stamp, stamp, adopted)])
            inserted.update((pool_id, study_uid) for pool_id, study_uid in cursor.fetchall())
    return inserted


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
        for (pool_id, study_uid), (count, last_seen) in sorted(touches.items()):  # one lock order for all writers
            Binding.objects.filter(pool_id=pool_id, study_uid=study_uid).update(
                instance_count=F("instance_count") + count,
                last_seen_utc=Greatest(F("last_seen_utc"), last_seen),
            )


# How often expired bindings are purged (by Celery beat, or by runproxy when heartbeats run inline).
BINDING_PURGE_SECONDS = 600.0


def instances_record(*, locations: dict[tuple[str, str], tuple[str, str, dt.datetime]]) -> None:
    """Write-behind of where relayed instances went: (pool, SOP Instance UID) ->
    (backend, study, seen), in one transaction; an instance already known keeps its row.
    On SQLite and PostgreSQL a multi-row INSERT ... ON CONFLICT DO NOTHING with no model
    objects (building them was two thirds of this write's CPU, a row per relayed instance);
    elsewhere the ORM's bulk insert."""
    rows = sorted(locations.items())  # one lock order for all writers
    if connection.vendor not in ("sqlite", "postgresql"):
        InstanceLocation.objects.bulk_create(
            [InstanceLocation(pool_id=pool_id, sop_instance_uid=sop_uid, backend_id=backend_id, study_uid=study_uid,
                              seen_utc=seen)
             for (pool_id, sop_uid), (backend_id, study_uid, seen) in rows],
            ignore_conflicts=True, batch_size=500,
        )
        return
    seen_field = InstanceLocation._meta.get_field("seen_utc")
    values = [(pool_id, sop_uid, backend_id, study_uid, seen_field.get_db_prep_save(seen, connection))
              for (pool_id, sop_uid), (backend_id, study_uid, seen) in rows]
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, len(values), _LOCATION_ROWS_PER_STATEMENT):
            chunk = values[start:start + _LOCATION_ROWS_PER_STATEMENT]
            cursor.execute(f"{_insert_location_head()} {', '.join(['(%s, %s, %s, %s, %s)'] * len(chunk))} "
                           "ON CONFLICT DO NOTHING", [value for row in chunk for value in row])


_LOCATION_ROWS_PER_STATEMENT = 500  # 2,500 parameters: within SQLite's and PostgreSQL's limits


@functools.cache
def _insert_location_head() -> str:
    meta = InstanceLocation._meta
    columns = ", ".join(connection.ops.quote_name(meta.get_field(name).column)
                        for name in ("pool", "sop_instance_uid", "backend", "study_uid", "seen_utc"))
    return f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({columns}) VALUES"


def bindings_purge_expired(*, window_hours: float, now: dt.datetime) -> int:
    """Delete bindings idle for longer than the study cache window, then the instance
    locations of studies that no longer have a binding (they live as long as it does).
    The ledger keeps what it knows: adopted bindings and those whose verdict is split or
    missing are not purged."""
    cutoff = now - dt.timedelta(hours=window_hours)
    deleted, _ = (Binding.objects.filter(last_seen_utc__lt=cutoff).exclude(adopted=True)
                  .exclude(verdict__in=KEPT_VERDICTS).delete())
    bound = Binding.objects.filter(pool_id=OuterRef("pool_id"), study_uid=OuterRef("study_uid"))
    InstanceLocation.objects.filter(seen_utc__lt=cutoff).filter(~Exists(bound)).delete()
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


# -- the study ledger -------------------------------------------------------------------

# How long one host may take to verify a study before another may try (and how long a
# verification that could not reach its backend waits before it is tried again).
VERIFY_LEASE_SECONDS = 300.0
VERIFY_POSTPONE_SECONDS = 60.0


def bindings_mark_adopted(*, pool_id: str, study_uids: list[str], backend_id: str) -> int:
    """Mark bindings learnt from the backends as adopted (those still bound to ``backend_id``)."""
    marked = 0
    for start in range(0, len(study_uids), _CLAIM_ROWS_PER_STATEMENT):
        marked += Binding.objects.filter(pool_id=pool_id, backend_id=backend_id,
                                         study_uid__in=study_uids[start:start + _CLAIM_ROWS_PER_STATEMENT]
                                         ).update(adopted=True)
    return marked


def binding_lease(*, binding_id: int, verified_utc: dt.datetime | None, now: dt.datetime,
                  seconds: float = VERIFY_LEASE_SECONDS) -> bool:
    """Take the binding's verification lease unless another host holds it, or verified it
    since ``verified_utc`` was read: a conditional update whose row count says who won, so
    several hosts verify each study once."""
    verified = Q(verified_utc__isnull=True) if verified_utc is None else Q(verified_utc=verified_utc)
    return Binding.objects.filter(Q(lease_until_utc__isnull=True) | Q(lease_until_utc__lt=now), verified,
                                  id=binding_id).update(lease_until_utc=now + dt.timedelta(seconds=seconds)) == 1


def binding_postpone(*, binding_id: int, now: dt.datetime, seconds: float = VERIFY_POSTPONE_SECONDS) -> None:
    """Verification could not be done now (a backend unreachable): try again later."""
    Binding.objects.filter(id=binding_id).update(lease_until_utc=now + dt.timedelta(seconds=seconds))


def binding_verdict_record(*, pool_id: str, study_uid: str, backend_id: str, verdict: str, held: dict[str, int],
                           now: dt.datetime) -> bool:
    """Write a verification's verdict, if the study is still bound to the backend that was
    verified (a concurrent rebind wins), and release the lease."""
    return Binding.objects.filter(pool_id=pool_id, study_uid=study_uid, backend_id=backend_id).update(
        verdict=verdict, held=held, verified_utc=now, lease_until_utc=None) == 1


def adoption_start(*, pool_id: str, since: dt.date, until: dt.date, since_arg: str, until_arg: str,
                   now: dt.datetime) -> Adoption:
    return Adoption.objects.create(pool_id=pool_id, since=since, until=until, since_arg=since_arg,
                                   until_arg=until_arg, started_utc=now)


def adoption_window_done(*, adoption_id: int, first: dt.date | None, last: dt.date | None, undated: bool,
                         studies: int, capped: bool, now: dt.datetime) -> None:
    AdoptionWindow.objects.create(adoption_id=adoption_id, first=first, last=last, undated=undated, studies=studies,
                                  capped=capped, done_utc=now)


def adoption_finish(*, adoption_id: int, now: dt.datetime) -> None:
    Adoption.objects.filter(id=adoption_id).update(finished_utc=now)
