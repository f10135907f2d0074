from django.contrib import admin

from pools.models import Backend, Pool


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = ["id", "ae_title", "host", "port", "enabled"]


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    list_display = ["id", "pool", "ae_title", "host", "port", "weight", "health_mode", "enabled", "draining"]
    list_filter = ["pool", "health_mode", "enabled", "draining"]
    search_fields = ["id", "ae_title", "host"]
