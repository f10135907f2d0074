"""The last known health of each backend, written by the heartbeat service."""

from __future__ import annotations

from django.db import models


class BackendHealth(models.Model):
    backend = models.OneToOneField(
        "pools.Backend", on_delete=models.CASCADE, primary_key=True, related_name="health_state"
    )
    healthy = models.BooleanField(default=False)
    # Normalized load (depth / capacity, or the backend's own `load`); null when the
    # backend does not report one. Null is "unknown", never zero.
    load = models.FloatField(null=True, blank=True)
    queue_depth = models.IntegerField(null=True, blank=True)
    capacity = models.IntegerField(null=True, blank=True)
    last_check_utc = models.DateTimeField(null=True, blank=True)
    last_ok_utc = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name_plural = "backend health"

    def __str__(self) -> str:
        state = "healthy" if self.healthy else "unhealthy"
        return f"{self.backend_id}: {state}, load={self.load}"


class HeartbeatRound(models.Model):
    """When a heartbeat round last completed per pool (stale-heartbeat detection)."""

    pool = models.OneToOneField("pools.Pool", on_delete=models.CASCADE, primary_key=True)
    completed_utc = models.DateTimeField()
    runner = models.CharField(max_length=128, blank=True, default="")
