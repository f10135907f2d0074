from __future__ import annotations

import datetime as dt

from django.db.models import Count, F, Q, QuerySet

from affinity.models import Adoption, AdoptionWindow, Binding, InstanceLocation
from synthiq_project.queries import filtered


def binding_backend(*, pool_id: str, study_uid: str) -> str | None:
    return (
        Binding.objects.filter(pool_id=pool_id, study_uid=study_uid)
        .values_list("backend_id", flat=True)
        .first()
    )


def bindings_backends(*, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The backend of each (pool, study) key that has a binding, in one query per pool."""
    by_pool: dict[str, list[str]] = {}
    for pool_id, study_uid in keys:
        by_pool.setdefault(pool_id, []).append(study_uid)
    found: dict[tuple[str, str], str] = {}
    for pool_id, study_uids in by_pool.items():
        rows = Binding.objects.filter(pool_id=pool_id, study_uid__in=study_uids).values_list("study_uid", "backend_id")
        found.update({(pool_id, study_uid): backend_id for study_uid, backend_id in rows})
    return found


def bindings_search(
    *,
    study_uid_prefix: str = "",
    pool_id: str = "",
    backend_id: str = "",
    committed: bool | None = None,
) -> QuerySet[Binding]:
    """Bindings for the admin API, most recently seen first (stable order for paging)."""
    qs = filtered(Binding.objects.all(), study_uid__startswith=study_uid_prefix, pool_id=pool_id,
                  backend_id=backend_id, committed_utc__isnull=None if committed is None else not committed)
    return qs.order_by("-last_seen_utc", "-id")


def bindings_of_study(*, study_uid: str) -> list[Binding]:
    """A study's bindings, one per pool it was seen in."""
    return list(Binding.objects.filter(study_uid=study_uid).order_by("pool_id"))


def binding_of_study_in_pool(*, pool_id: str, study_uid: str) -> Binding | None:
    return Binding.objects.filter(pool_id=pool_id, study_uid=study_uid).first()


def instance_backends(*, pool_id: str, sop_instance_uids: list[str]) -> dict[str, str]:
    """The backend each known instance was relayed to (SOP Instance UID -> backend id)."""
    rows = InstanceLocation.objects.filter(pool_id=pool_id, sop_instance_uid__in=sop_instance_uids)
    return dict(rows.values_list("sop_instance_uid", "backend_id"))


# -- the study ledger -------------------------------------------------------------------


def study_acknowledged(*, pool_id: str, study_uid: str) -> set[str]:
    """The SOP Instance UIDs of the study that SynthIQ relayed and a backend acknowledged."""
    return set(InstanceLocation.objects.filter(pool_id=pool_id, study_uid=study_uid)
               .values_list("sop_instance_uid", flat=True))


def acknowledged_counts(*, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """How many acknowledged instances each (pool, study) has, in one query per pool."""
    by_pool: dict[str, list[str]] = {}
    for pool_id, study_uid in keys:
        by_pool.setdefault(pool_id, []).append(study_uid)
    counts: dict[tuple[str, str], int] = {}
    for pool_id, study_uids in by_pool.items():
        rows = (InstanceLocation.objects.filter(pool_id=pool_id, study_uid__in=study_uids).values("study_uid")
                .annotate(n=Count("id")).values_list("study_uid", "n"))
        counts.update({(pool_id, study_uid): n for study_uid, n in rows})
    return counts


def bindings_due_for_verification(*, pool_id: str, now: dt.datetime, quiet_seconds: float, reverify_hours: float,
                                  limit: int) -> list[Binding]:
    """Bindings to verify now: quiet for ``quiet_seconds``, not leased by another host, and
    never verified, or given instances since, or verified more than ``reverify_hours`` ago.
    Never-verified first, then the oldest verdicts."""
    due = (Q(verified_utc__isnull=True) | Q(verified_utc__lt=F("last_seen_utc"))
           | Q(verified_utc__lt=now - dt.timedelta(hours=reverify_hours)))
    free = Q(lease_until_utc__isnull=True) | Q(lease_until_utc__lt=now)
    return list(Binding.objects.filter(due, free, pool_id=pool_id,
                                       last_seen_utc__lte=now - dt.timedelta(seconds=quiet_seconds))
                .order_by(F("verified_utc").asc(nulls_first=True), "id")[:limit])


def bindings_with_verdict(*, verdicts: list[str], pool_id: str = "") -> QuerySet[Binding]:
    """Bindings whose verdict is one of these, by study (stable order for paging)."""
    qs = Binding.objects.filter(verdict__in=verdicts)
    if pool_id:
        qs = qs.filter(pool_id=pool_id)
    return qs.order_by("study_uid", "pool_id")


def verdict_counts() -> dict[tuple[str, str], int]:
    """(pool, verdict) -> bindings."""
    rows = Binding.objects.values("pool_id", "verdict").annotate(n=Count("id")).values_list("pool_id", "verdict", "n")
    return {(pool_id, verdict): n for pool_id, verdict, n in rows}


def adoption_resumable(*, pool_id: str, since_arg: str, until_arg: str) -> Adoption | None:
    """The latest unfinished adoption of the pool run with these arguments."""
    return (Adoption.objects.filter(pool_id=pool_id, since_arg=since_arg, until_arg=until_arg,
                                    finished_utc__isnull=True).order_by("-started_utc").first())


def adoption_windows_done(*, adoption_id: int) -> list[AdoptionWindow]:
    return list(AdoptionWindow.objects.filter(adoption_id=adoption_id).order_by("first", "id"))


def bindings_of_pool(*, pool_id: str, study_uids: list[str] | None = None,
                     verdict: str = "") -> QuerySet[Binding]:
    """A pool's bindings (these studies, this verdict), by study."""
    qs = Binding.objects.filter(pool_id=pool_id)
    if study_uids is not None:
        qs = qs.filter(study_uid__in=study_uids)
    if verdict:
        qs = qs.filter(verdict=verdict)
    return qs.order_by("study_uid")
