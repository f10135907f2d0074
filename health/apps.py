from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The shipped health adapters register themselves with health.probes on import
        # (here, so that probes does not import what imports it).
        import health.adapters  # noqa: F401
