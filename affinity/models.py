"""Study affinity: one row per study per pool. Routing metadata only, no demographics.

The binding is also the study ledger's entry: whether it was adopted (learnt from the
backends rather than from traffic), the verdict of its last verification and what each
backend held then. The instances SynthIQ relayed and had acknowledged are kept as
``InstanceLocation`` rows for as long as their binding.
"""

from __future__ import annotations

from django.db import models


class Verdict(models.TextChoices):
    # The bound backend holds every acknowledged instance and every instance any other
    # backend holds (copies elsewhere are listed in ``held``).
    WHOLE = "whole"
    # Another backend holds an instance the bound backend lacks.
    SPLIT = "split"
    # An acknowledged instance is on no backend (and nothing is split).
    MISSING = "missing"
    # Not quiet yet, or no backend could be asked.
    UNVERIFIED = "unverified"


# Verdicts that keep a binding past the study cache window: the ledger must not forget them.
KEPT_VERDICTS = (Verdict.SPLIT, Verdict.MISSING)


class Binding(models.Model):
    study_uid = models.CharField(max_length=64)
    pool = models.ForeignKey("pools.Pool", on_delete=models.PROTECT)
    backend = models.ForeignKey("pools.Backend", on_delete=models.PROTECT)
    first_seen_utc = models.DateTimeField()
    last_seen_utc = models.DateTimeField(db_index=True)
    instance_count = models.PositiveIntegerField(
        default=0, verbose_name="instances received", help_text="C-STOREs relayed for this study, re-sends included")
    committed_utc = models.DateTimeField(null=True, blank=True)
    # Database defaults too: runproxy claims bindings with a multi-row insert of its own.
    adopted = models.BooleanField(default=False, db_default=False,
                                  help_text="Learnt from the backends (manage.py adopt), not traffic")
    verdict = models.CharField(max_length=10, choices=Verdict.choices, default=Verdict.UNVERIFIED,
                               db_default=Verdict.UNVERIFIED)
    verified_utc = models.DateTimeField(null=True, blank=True)
    # Instances each backend held at the last verification: {backend id: count} (null: never verified).
    held = models.JSONField(null=True, blank=True)
    # Verification in progress on some host until then (or postponed until then).
    lease_until_utc = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pool", "study_uid"], name="binding_unique_study"),
        ]
        indexes = [models.Index(fields=["study_uid"]), models.Index(fields=["verdict", "pool"], name="binding_verdict")]

    def __str__(self) -> str:
        return f"{self.pool_id}/{self.study_uid} -> {self.backend_id}"


class InstanceLocation(models.Model):
    """Where a relayed instance went, by SOP Instance UID, recorded when the backend
    acknowledged it (0x0000, 0xB000, 0xB006, 0xB007): storage commitment requests name
    instances, not studies, and verification compares them with what backends hold.
    Routing metadata only; kept as long as the study's binding."""

    pool = models.ForeignKey("pools.Pool", on_delete=models.CASCADE)
    sop_instance_uid = models.CharField(max_length=64)
    backend = models.ForeignKey("pools.Backend", on_delete=models.CASCADE)
    study_uid = models.CharField(max_length=64)
    seen_utc = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pool", "sop_instance_uid"], name="instance_location_unique"),
        ]
        indexes = [models.Index(fields=["pool", "study_uid"], name="instance_location_study")]

    def __str__(self) -> str:
        return f"{self.pool_id}/{self.sop_instance_uid} -> {self.backend_id}"


class Adoption(models.Model):
    """One run of ``manage.py adopt`` over a pool's StudyDate range; an interrupted run
    with the same arguments resumes it (its windows done are not asked again)."""

    pool = models.ForeignKey("pools.Pool", on_delete=models.CASCADE)
    # The arguments as given ("" for not given): what a resumed run must match.
    since_arg = models.CharField(max_length=8, blank=True, default="")
    until_arg = models.CharField(max_length=8, blank=True, default="")
    since = models.DateField()
    until = models.DateField()
    started_utc = models.DateTimeField()
    finished_utc = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.pool_id} {self.since}..{self.until}"


class AdoptionWindow(models.Model):
    """A StudyDate window (or the final undated query) every enabled backend answered."""

    adoption = models.ForeignKey(Adoption, on_delete=models.CASCADE, related_name="windows")
    first = models.DateField(null=True, blank=True)
    last = models.DateField(null=True, blank=True)
    undated = models.BooleanField(default=False)
    studies = models.PositiveIntegerField(default=0)
    # A one-day window still capped by a backend: what it holds that day may be incomplete.
    capped = models.BooleanField(default=False)
    done_utc = models.DateTimeField()
