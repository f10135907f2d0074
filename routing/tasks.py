"""Celery tasks: a thin wrapper around the study ledger's verification round."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="routing.ledger_verify_due", ignore_result=True)
def ledger_verify_due() -> None:
    """One round, kept to about its period (and each query to as long) so that a heartbeat
    queued behind it on a busy worker is not held up for long."""
    from pools.selectors import config_file_settings, pools_enabled, reconciliation_settings
    from routing.verifier import VERIFY_ROUND_SECONDS, verification_round

    verification_round(pool_ids=[p.id for p in pools_enabled()], settings=reconciliation_settings(),
                       heartbeat_timeout=config_file_settings()["heartbeat_timeout_seconds"],
                       budget_seconds=VERIFY_ROUND_SECONDS, timeout=VERIFY_ROUND_SECONDS)
