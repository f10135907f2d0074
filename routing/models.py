"""Routing activity: first-instance decisions and what each runproxy process publishes."""

from __future__ import annotations

from django.db import models

from routing.waterfall import DECISION_TIERS


class RoutingDecision(models.Model):
    REASONS = [(tier, tier) for tier in DECISION_TIERS]

    at_utc = models.DateTimeField(db_index=True)
    pool = models.ForeignKey("pools.Pool", on_delete=models.CASCADE)
    backend = models.ForeignKey("pools.Backend", on_delete=models.CASCADE)
    study_uid = models.CharField(max_length=64)
    reason = models.CharField(max_length=16, choices=REASONS)
    calling_ae = models.CharField(max_length=16, blank=True, default="")
    source_ip = models.CharField(max_length=64, blank=True, default="")
    modality = models.CharField(max_length=16, blank=True, default="")
    process = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        ordering = ["-at_utc", "-id"]


class ProxyProcess(models.Model):
    """A runproxy process's published counters, refreshed every few seconds."""

    id = models.CharField(primary_key=True, max_length=128)
    started_utc = models.DateTimeField()
    updated_utc = models.DateTimeField()
    stopped = models.BooleanField(default=False)
    counters = models.JSONField(default=dict)
    listeners = models.JSONField(default=list)

    class Meta:
        verbose_name = "runproxy process"
        verbose_name_plural = "runproxy processes"


class CommitmentTransaction(models.Model):
    """A storage commitment SynthIQ passed on and may still see a report for (reports can
    reach any runproxy process or host): who asked, by which AE title, and whether SynthIQ
    gathers the backends' reports into one (``merged``) or passes one backend's on."""

    transaction_uid = models.CharField(primary_key=True, max_length=64)
    pool_id = models.CharField(max_length=64)
    requester_ae = models.CharField(max_length=16)
    called_ae = models.CharField(max_length=16)
    merged = models.BooleanField(default=False)
    created_utc = models.DateTimeField(db_index=True)


class CommitmentReport(models.Model):
    """One backend's N-EVENT-REPORT for a merged transaction: its committed and failed
    instances, as JSON lists of [SOP Class UID, SOP Instance UID(, Failure Reason)]."""

    transaction_uid = models.CharField(max_length=64, db_index=True)
    backend = models.CharField(max_length=64)
    committed = models.TextField(default="[]")
    failed = models.TextField(default="[]")
    received_utc = models.DateTimeField()


class FailedOperation(models.Model):
    """An operation that ended in a failure status, as the modality was answered: the last
    few hundred are kept (routing.telemetry.FAILURES_KEPT), for an operator to see who
    failed, where and why."""

    class Origin(models.TextChoices):
        BACKEND = "backend", "the backend answered it"
        SYNTHIQ = "synthiq", "SynthIQ answered it"

    at_utc = models.DateTimeField(db_index=True)
    pool = models.ForeignKey("pools.Pool", on_delete=models.CASCADE)
    service = models.CharField(max_length=16, default="C-STORE")
    calling_ae = models.CharField(max_length=16, blank=True, default="")
    source_ip = models.CharField(max_length=64, blank=True, default="")
    study_uid = models.CharField(max_length=64, blank=True, default="")
    sop_instance_uid = models.CharField(max_length=64, blank=True, default="")
    # An id, not a foreign key: the record outlives a backend removed from the configuration.
    backend_id = models.CharField(max_length=64, blank=True, default="")
    status = models.PositiveIntegerField()
    comment = models.CharField(max_length=128, blank=True, default="")
    origin = models.CharField(max_length=8, choices=Origin.choices)
    process = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        ordering = ["-at_utc", "-id"]


class RejectedAssociation(models.Model):
    """Who was turned away, from where and why, with how often: one row per pool, reason,
    calling AE, called AE and source address, counted by every runproxy process."""

    pool = models.ForeignKey("pools.Pool", on_delete=models.CASCADE)
    reason = models.CharField(max_length=32)
    calling_ae = models.CharField(max_length=16, blank=True, default="")
    called_ae = models.CharField(max_length=16, blank=True, default="")
    source_ip = models.CharField(max_length=64, blank=True, default="")
    detail = models.CharField(max_length=255, blank=True, default="")
    count = models.PositiveIntegerField(default=0)
    first_seen_utc = models.DateTimeField()
    last_seen_utc = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-last_seen_utc", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["pool", "reason", "calling_ae", "called_ae", "source_ip"],
                                    name="rejected_association_once"),
        ]
