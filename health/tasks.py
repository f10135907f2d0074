"""Celery tasks: thin wrappers around the heartbeat and binding-expiry services."""

from __future__ import annotations

import datetime as dt

from celery import shared_task


@shared_task(name="health.heartbeat_run_all", ignore_result=True)
def heartbeat_run_all() -> None:
    from health.services import (
        heartbeat_policy_read,
        heartbeat_run_all,
        heartbeat_runner_name,
    )

    heartbeat_run_all(policy=heartbeat_policy_read(), runner=heartbeat_runner_name(kind="celery"))


@shared_task(name="affinity.bindings_purge_expired", ignore_result=True)
def bindings_purge_expired() -> None:
    from affinity.services import bindings_purge_expired
    from health.services import heartbeat_policy_read

    bindings_purge_expired(window_hours=heartbeat_policy_read().study_cache_window_hours,
                           now=dt.datetime.now(dt.UTC))
