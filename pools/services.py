"""Writes to pools and backends."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from pools.config import Config, Model
from pools.models import Backend, Pool
from pools.tokens import commitment_token_hash

logger = logging.getLogger("synthiq.pools")


def _as_json(section: Model | None) -> dict[str, Any] | None:
    """A config section as the database keeps it (the file's own keys)."""
    return section.model_dump(mode="json", by_alias=True, exclude_none=True) if section is not None else None


@transaction.atomic
def config_sync(*, config: Config) -> dict[str, list[str]]:
    """Make the database match a validated config. Removed backends are disabled, never
    deleted (bindings point at them); draining, a runtime state, is left as it is."""
    changes: dict[str, list[str]] = {"pools": [], "backends": [], "disabled": []}
    listed: set[str] = set()
    for p in config.pools:
        pool, _ = Pool.objects.update_or_create(
            id=p.id,
            defaults={
                "ae_title": p.ae_title,
                "host": p.host,
                "port": p.port,
                "allowed_calling_ae_titles": list(p.allowed_calling_ae_titles),
                "tls": _as_json(p.tls),
                "enabled": True,
            },
        )
        changes["pools"].append(pool.id)
        for b in p.backends:
            backend, _ = Backend.objects.update_or_create(
                id=b.id,
                defaults={
                    "pool": pool,
                    "ae_title": b.ae_title,
                    "host": b.host,
                    "port": b.port,
                    "weight": b.weight,
                    "enabled": b.enabled,
                    "health_mode": b.health.mode,
                    "health": _as_json(b.health),
                    "commitment_token": commitment_token_hash(token=b.commitment_token) if b.commitment_token else "",
                    "tls": _as_json(b.tls),
                },
            )
            listed.add(backend.id)
            changes["backends"].append(backend.id)
    for backend in Backend.objects.exclude(id__in=listed).filter(enabled=True):
        backend.enabled = False
        backend.save(update_fields=["enabled"])
        changes["disabled"].append(backend.id)
        logger.warning("backend=%s removed from the config file: disabled, bindings kept", backend.id)
    Pool.objects.exclude(id__in=changes["pools"]).update(enabled=False)
    return changes


def backend_set_draining(*, backend_id: str, draining: bool) -> bool:
    """Conditional update: returns whether the backend existed."""
    return Backend.objects.filter(id=backend_id).update(draining=draining) == 1
