"""Pools and backends in the Django admin. The configuration file is authoritative, so
configuration fields are read-only here; draining (runtime state) is an action."""

from __future__ import annotations

from django.contrib import admin, messages

from pools import services
from pools.models import Backend, Pool
from pools.selectors import health_masked


class ReadOnlyAdmin(admin.ModelAdmin):
    """A model SynthIQ's processes write (health, routing activity, bindings): viewed here,
    never added or edited; deleting stays the operator's, where a model's admin allows it."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class BackendInline(admin.TabularInline):
    model = Backend
    fields = ("id", "ae_title", "host", "port", "weight", "health_mode", "enabled", "draining")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = ("id", "ae_title", "host", "port", "enabled", "backend_count")
    list_filter = ("enabled",)
    search_fields = ("id", "ae_title")
    readonly_fields = ("id", "ae_title", "host", "port", "allowed_calling_ae_titles", "tls", "enabled")
    inlines = (BackendInline,)

    @admin.display(description="backends")
    def backend_count(self, obj: Pool) -> int:
        return obj.backends.count()

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    list_display = ("id", "pool", "ae_title", "address", "weight", "health_mode", "health_status", "load",
                    "enabled", "draining")
    list_filter = ("pool", "health_mode", "enabled", "draining")
    search_fields = ("id", "ae_title", "host")
    list_select_related = ("pool", "health_state")
    fields = ("id", "pool", "ae_title", "host", "port", "weight", "enabled", "draining", "health_mode",
              "health_config", "tls", "commitment_token_set")
    readonly_fields = fields
    actions = ("drain", "undrain")

    @admin.display(description="address")
    def address(self, obj: Backend) -> str:
        return f"{obj.host}:{obj.port}"

    # Not named "health": list_display would pick the model field of that name, the health
    # check's configuration (its password included), over this method.
    @admin.display(description="health", ordering="health_state__healthy")
    def health_status(self, obj: Backend) -> str:
        state = getattr(obj, "health_state", None)
        if state is None:
            return "unknown"
        return "healthy" if state.healthy else "unhealthy"

    @admin.display(description="load")
    def load(self, obj: Backend) -> str:
        state = getattr(obj, "health_state", None)
        if not obj.load_is_reported or state is None or state.load is None:
            return "unknown"
        return f"{state.load:.0%}"

    @admin.display(description="health check")
    def health_config(self, obj: Backend) -> dict:
        return health_masked(health=obj.health)  # the password itself is never shown

    @admin.display(description="commitment token", boolean=True)
    def commitment_token_set(self, obj: Backend) -> bool:
        return bool(obj.commitment_token)  # the secret itself is never shown

    @admin.action(description="Drain: no new studies (bound ones keep coming)")
    def drain(self, request, queryset):
        self._set_draining(request, queryset, True)

    @admin.action(description="Undrain: take new studies again")
    def undrain(self, request, queryset):
        self._set_draining(request, queryset, False)

    def _set_draining(self, request, queryset, draining: bool) -> None:
        ids = list(queryset.values_list("id", flat=True))
        for backend_id in ids:
            services.backend_set_draining(backend_id=backend_id, draining=draining)
        self.message_user(request, f"{'Draining' if draining else 'Undrained'}: {', '.join(ids)}", messages.SUCCESS)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
