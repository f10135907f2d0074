from django.contrib import admin

from affinity.models import Binding


@admin.register(Binding)
class BindingAdmin(admin.ModelAdmin):
    list_display = ["study_uid", "pool", "backend", "instance_count", "first_seen_utc", "last_seen_utc", "committed_utc"]
    list_filter = ["pool", "backend"]
    search_fields = ["=study_uid"]
    date_hierarchy = "last_seen_utc"
