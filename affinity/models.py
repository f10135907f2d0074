"""Study affinity: one row per study per pool. Routing metadata only, no demographics."""

from __future__ import annotations

from django.db import models


class Binding(models.Model):
    study_uid = models.CharField(max_length=64)
    pool = models.ForeignKey("pools.Pool", on_delete=models.PROTECT)
    backend = models.ForeignKey("pools.Backend", on_delete=models.PROTECT)
    first_seen_utc = models.DateTimeField()
    last_seen_utc = models.DateTimeField(db_index=True)
    instance_count = models.PositiveIntegerField(
        default=0, verbose_name="instances received", help_text="C-STOREs relayed for this study, re-sends included")
    committed_utc = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pool", "study_uid"], name="binding_unique_study"),
        ]
        indexes = [models.Index(fields=["study_uid"])]

    def __str__(self) -> str:
        return f"{self.pool_id}/{self.study_uid} -> {self.backend_id}"


class InstanceLocation(models.Model):
    """Where a relayed instance went, by SOP Instance UID: storage commitment requests name
    instances, not studies. Routing metadata only; kept for the study cache window."""

    pool = models.ForeignKey("pools.Pool", on_delete=models.CASCADE)
    sop_instance_uid = models.CharField(max_length=64)
    backend = models.ForeignKey("pools.Backend", on_delete=models.CASCADE)
    study_uid = models.CharField(max_length=64)
    seen_utc = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pool", "sop_instance_uid"], name="instance_location_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.pool_id}/{self.sop_instance_uid} -> {self.backend_id}"
