"""Backend health and heartbeat rounds in the Django admin (read-only: heartbeats write them)."""

from __future__ import annotations

import datetime as dt

from django.contrib import admin

from health.models import BackendHealth, HeartbeatRound
from pools.admin import ReadOnlyAdmin


@admin.register(BackendHealth)
class BackendHealthAdmin(ReadOnlyAdmin):
    list_display = ("backend", "pool", "healthy", "load_display", "queue_depth", "capacity", "last_ok_utc",
                    "last_check_utc", "error")
    list_filter = ("healthy", "backend__pool", "backend__health_mode")
    search_fields = ("backend__id",)
    list_select_related = ("backend",)

    @admin.display(description="pool", ordering="backend__pool_id")
    def pool(self, obj: BackendHealth) -> str:
        return obj.backend.pool_id

    @admin.display(description="load", ordering="load")
    def load_display(self, obj: BackendHealth) -> str:
        return "unknown" if obj.load is None else f"{obj.load:.0%}"

    @admin.display(description="last error")
    def error(self, obj: BackendHealth) -> str:
        return obj.last_error[:120]


@admin.register(HeartbeatRound)
class HeartbeatRoundAdmin(ReadOnlyAdmin):
    list_display = ("pool", "completed_utc", "age", "runner")

    @admin.display(description="age")
    def age(self, obj: HeartbeatRound) -> str:
        return f"{(dt.datetime.now(dt.UTC) - obj.completed_utc).total_seconds():.0f} s"
