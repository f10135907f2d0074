from __future__ import annotations

from django.db.models import QuerySet

from pools.models import Backend, Pool


def pools_enabled() -> QuerySet[Pool]:
    return Pool.objects.filter(enabled=True).order_by("id")


def backends_of_pool(*, pool_id: str) -> list[Backend]:
    return list(Backend.objects.filter(pool_id=pool_id).order_by("id"))
