from django.contrib import admin

from health.models import BackendHealth, HeartbeatRound


@admin.register(BackendHealth)
class BackendHealthAdmin(admin.ModelAdmin):
    list_display = ["backend", "healthy", "load", "queue_depth", "capacity", "last_ok_utc", "last_check_utc", "last_error"]
    list_filter = ["healthy"]


@admin.register(HeartbeatRound)
class HeartbeatRoundAdmin(admin.ModelAdmin):
    list_display = ["pool", "completed_utc", "runner"]
