from __future__ import annotations

from django.db.models import QuerySet

from affinity.models import Binding, InstanceLocation


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
    qs = Binding.objects.all()
    if study_uid_prefix:
        qs = qs.filter(study_uid__startswith=study_uid_prefix)
    if pool_id:
        qs = qs.filter(pool_id=pool_id)
    if backend_id:
        qs = qs.filter(backend_id=backend_id)
    if committed is not None:
        qs = qs.filter(committed_utc__isnull=not committed)
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
