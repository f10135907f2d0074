from django.contrib import admin

from routing.models import ProxyProcess, RoutingDecision


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(admin.ModelAdmin):
    list_display = ["at_utc", "pool", "study_uid", "backend", "reason", "calling_ae", "modality"]
    list_filter = ["pool", "backend", "reason"]
    search_fields = ["=study_uid"]


@admin.register(ProxyProcess)
class ProxyProcessAdmin(admin.ModelAdmin):
    list_display = ["id", "started_utc", "updated_utc", "stopped"]
