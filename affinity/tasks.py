"""Celery tasks: a thin wrapper around binding expiry."""

from __future__ import annotations

import datetime as dt

from celery import shared_task


@shared_task(name="affinity.bindings_purge_expired", ignore_result=True)
def bindings_purge_expired() -> None:
    from affinity.services import bindings_purge_expired
    from pools.selectors import config_file_settings

    bindings_purge_expired(window_hours=config_file_settings()["study_cache_window_hours"],
                           now=dt.datetime.now(dt.UTC))
