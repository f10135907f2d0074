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
