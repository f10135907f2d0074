"""Celery tasks: a thin wrapper around the study ledger's verification round."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="routing.ledger_verify_due", ignore_result=True)
def ledger_verify_due() -> None:
    from pools.selectors import config_file_settings, pools_enabled, reconciliation_settings
    from routing.verifier import verification_round

    verification_round(pool_ids=[p.id for p in pools_enabled()], settings=reconciliation_settings(),
                       heartbeat_timeout=config_file_settings()["heartbeat_timeout_seconds"])
