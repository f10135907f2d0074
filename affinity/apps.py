from django.apps import AppConfig


class AffinityConfig(AppConfig):
    name = "affinity"
    default_auto_field = "django.db.models.BigAutoField"
