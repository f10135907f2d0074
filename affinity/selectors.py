from __future__ import annotations

from affinity.models import Binding


def binding_backend(*, pool_id: str, study_uid: str) -> str | None:
    return (
        Binding.objects.filter(pool_id=pool_id, study_uid=study_uid)
        .values_list("backend_id", flat=True)
        .first()
    )
