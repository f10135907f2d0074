"""Celery tasks: a thin wrapper around the heartbeat service."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="health.heartbeat_run_all", ignore_result=True)
def heartbeat_run_all() -> None:
    from health.services import (
        heartbeat_policy_read,
        heartbeat_run_all,
        heartbeat_runner_name,
    )

    heartbeat_run_all(policy=heartbeat_policy_read(), runner=heartbeat_runner_name(kind="celery"))
