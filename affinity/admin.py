"""Bindings in the Django admin: searchable by SUID (prefix), filterable by pool, backend
and commitment. Read-only: runproxy writes bindings; deleting one lets the study be
routed afresh, which is the one change an operator may need to make here."""

from __future__ import annotations

from django.contrib import admin

from affinity.models import Binding
from pools.admin import ReadOnlyAdmin


class CommittedFilter(admin.SimpleListFilter):
    title = "committed"
    parameter_name = "committed"

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(committed_utc__isnull=False)
        if self.value() == "no":
            return queryset.filter(committed_utc__isnull=True)
        return queryset


@admin.register(Binding)
class BindingAdmin(ReadOnlyAdmin):
    list_display = ("study_uid", "pool", "backend", "instance_count", "first_seen_utc", "last_seen_utc",
                    "committed", "committed_utc", "verdict", "adopted")
    list_filter = ("pool", "backend", CommittedFilter, "verdict", "adopted")
    # `^`: prefix match, which the study_uid index serves; a full SUID is a prefix of itself.
    search_fields = ("^study_uid",)
    search_help_text = "Study Instance UID, or its beginning"
    date_hierarchy = "last_seen_utc"
    ordering = ("-last_seen_utc",)
    list_select_related = ("pool", "backend")
    show_full_result_count = False  # no COUNT(*) over millions of bindings per page view
    readonly_fields = tuple(f.name for f in Binding._meta.fields)

    @admin.display(boolean=True, ordering="committed_utc")
    def committed(self, obj: Binding) -> bool:
        return obj.committed_utc is not None
