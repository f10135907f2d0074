from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from pools.config import DEFAULTS, ReconciliationConfig, config_load
from pools.models import Backend, Pool
from pools.tokens import commitment_token_hash


def config_file_settings() -> dict[str, float]:
    """The site-wide settings (heartbeat interval and timeout, study cache window) for a
    process that has no config object of its own (Celery): from the file in
    SYNTHIQ_CONFIG, validated as runproxy validates it, else the config model's defaults."""
    if settings.SYNTHIQ_CONFIG:
        config = config_load(path=settings.SYNTHIQ_CONFIG)
        return {name: getattr(config, name) for name in DEFAULTS}
    return dict(DEFAULTS)


def pools_enabled() -> QuerySet[Pool]:
    return Pool.objects.filter(enabled=True).order_by("id")


def backends_of_pool(*, pool_id: str) -> list[Backend]:
    return list(Backend.objects.filter(pool_id=pool_id).order_by("id"))


def pools_with_backends() -> list[Pool]:
    """Every pool with its backends prefetched (admin surface; disabled ones included)."""
    return list(Pool.objects.order_by("-enabled", "id").prefetch_related("backends"))


def backend_get(*, backend_id: str) -> Backend | None:
    return Backend.objects.filter(id=backend_id).first()


def backend_by_commitment_token(*, token: str) -> Backend | None:
    """The enabled backend this storage-commitment token authenticates, or None. An empty
    token matches none; a disabled backend (or one removed from the file, which disables
    it) commits nothing."""
    if not token:
        return None
    digest = commitment_token_hash(token=token)
    backend = Backend.objects.filter(commitment_token=digest, enabled=True).first()
    # The database's equality is not constant-time: the final word is compare_digest's.
    if backend is None or not hmac.compare_digest(backend.commitment_token, digest):
        return None
    return backend


def pools_as_stored() -> dict[str, Any]:
    """The pools and backends as the database holds them, keyed as the config file spells
    them (what `loadconfig --check` compares a file against). Secrets read "(set)": what
    is compared is printed, so a rotated token or password shows as no change."""
    return {"Pools": [
        {"Id": p.id, "AeTitle": p.ae_title, "Host": p.host, "Port": p.port, "Enabled": p.enabled,
         "AllowedCallingAeTitles": list(p.allowed_calling_ae_titles), "Tls": p.tls,
         "Backends": [{"Id": b.id, "AeTitle": b.ae_title, "Host": b.host, "Port": b.port, "Weight": b.weight,
                       "Enabled": b.enabled, "Health": health_masked(health=b.health), "Tls": b.tls,
                       "CommitmentToken": "(set)" if b.commitment_token else ""}
                      for b in p.backends.all()]}
        for p in pools_with_backends()]}


def health_masked(*, health: dict[str, Any]) -> dict[str, Any]:
    """A stored ``Health`` section fit to show: its password reads "(set)"."""
    return {key: "(set)" if key == "Password" and value else value for key, value in (health or {}).items()}


def pool_get(*, pool_id: str) -> Pool | None:
    return Pool.objects.filter(id=pool_id).first()


def reconciliation_settings() -> ReconciliationConfig:
    """The ``Reconciliation`` block for a process with no config object of its own (Celery,
    management commands): from the file in SYNTHIQ_CONFIG, else the defaults."""
    if settings.SYNTHIQ_CONFIG:
        return config_load(path=settings.SYNTHIQ_CONFIG).reconciliation
    return ReconciliationConfig()
