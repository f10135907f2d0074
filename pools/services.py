"""Writes to pools and backends."""

from __future__ import annotations

import logging

from django.db import transaction

from pools.config import Config
from pools.models import Backend, Pool

logger = logging.getLogger("synthiq.pools")


@transaction.atomic
def config_sync(*, config: Config) -> dict[str, list[str]]:
    """Make the database match a validated config. Removed backends are disabled, never
    deleted (bindings point at them); draining, a runtime state, is left as it is."""
    changes: dict[str, list[str]] = {"pools": [], "backends": [], "disabled": []}
    listed: set[str] = set()
    for p in config.pools:
        pool, _ = Pool.objects.update_or_create(
            id=p["Id"],
            defaults={
                "ae_title": p["AeTitle"],
                "host": p["Host"],
                "port": p["Port"],
                "allowed_calling_ae_titles": p["AllowedCallingAeTitles"],
                "tls": p.get("Tls"),
                "enabled": True,
            },
        )
        changes["pools"].append(pool.id)
        for b in p["Backends"]:
            backend, _ = Backend.objects.update_or_create(
                id=b["Id"],
                defaults={
                    "pool": pool,
                    "ae_title": b["AeTitle"],
                    "host": b["Host"],
                    "port": b["Port"],
                    "weight": b["Weight"],
                    "enabled": b["Enabled"],
                    "health_mode": b["Health"]["Mode"],
                    "health": b["Health"],
                    "commitment_token": b.get("CommitmentToken", ""),
                    "tls": b.get("Tls"),
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
