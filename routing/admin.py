"""Routing activity in the Django admin (read-only: runproxy writes it)."""

from __future__ import annotations

from django.contrib import admin

from pools.admin import ReadOnlyAdmin
from routing.counters import Counts, Snapshot, snapshot_of
from routing.models import FailedOperation, ProxyProcess, RejectedAssociation, RoutingDecision


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(ReadOnlyAdmin):
    list_display = ("at_utc", "pool", "study_uid", "backend", "reason", "calling_ae", "source_ip", "modality",
                    "process")
    list_filter = ("reason", "pool", "backend")
    search_fields = ("^study_uid", "=calling_ae")
    search_help_text = "Study Instance UID (or its beginning), or an exact calling AE title"
    date_hierarchy = "at_utc"
    show_full_result_count = False


@admin.register(FailedOperation)
class FailedOperationAdmin(ReadOnlyAdmin):
    list_display = ("at_utc", "pool", "service", "calling_ae", "source_ip", "study_uid", "backend_id", "status_hex",
                    "origin", "comment")
    list_filter = ("origin", "service", "pool", "backend_id")
    search_fields = ("^study_uid", "=calling_ae", "=sop_instance_uid")
    search_help_text = "Study Instance UID (or its beginning), an exact calling AE title or SOP Instance UID"
    date_hierarchy = "at_utc"
    show_full_result_count = False

    @admin.display(description="status", ordering="status")
    def status_hex(self, obj: FailedOperation) -> str:
        return f"0x{obj.status:04X}"


@admin.register(RejectedAssociation)
class RejectedAssociationAdmin(ReadOnlyAdmin):
    list_display = ("last_seen_utc", "pool", "reason", "calling_ae", "called_ae", "source_ip", "count",
                    "first_seen_utc", "detail")
    list_filter = ("reason", "pool")
    search_fields = ("=calling_ae", "=called_ae", "=source_ip")
    search_help_text = "An exact calling AE title, called AE title or source address"


@admin.register(ProxyProcess)
class ProxyProcessAdmin(ReadOnlyAdmin):
    list_display = ("id", "started_utc", "updated_utc", "stopped", "received", "cache_size", "db_ok")
    list_filter = ("stopped",)

    def _published(self, obj: ProxyProcess) -> Snapshot:
        return snapshot_of(obj.counters)

    @admin.display(description="received")
    def received(self, obj: ProxyProcess) -> int:
        return Counts(self._published(obj).get("counters"))["received"]

    @admin.display(description="cache size")
    def cache_size(self, obj: ProxyProcess) -> int:
        return int(self._published(obj).get("cache_size") or 0)

    @admin.display(description="database ok", boolean=True)
    def db_ok(self, obj: ProxyProcess) -> bool:
        return self._published(obj).get("db_ok") is not False
