"""Pools and backends, as loaded from the JSON configuration file.

The file is authoritative for configuration; runtime state that the file does not
carry (``draining``) lives only here. Backends are never deleted: bindings point at them.
"""

from __future__ import annotations

from django.db import models

from pools.config import HealthConfig, TlsConfig
from routing.dicom.netopts import ClientTls


class Pool(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=255, default="0.0.0.0")
    port = models.PositiveIntegerField()
    allowed_calling_ae_titles = models.JSONField(default=list, blank=True)
    tls = models.JSONField(null=True, blank=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.id} ({self.ae_title}@{self.host}:{self.port})"


class Backend(models.Model):
    class HealthMode(models.TextChoices):
        NATIVE = "native"
        CERTIFIED = "certified"
        ADAPTER = "adapter"
        LIVENESS = "liveness"

    # Backend ids are unique across the whole configuration so that a binding row
    # reads as `node-a` to an operator inspecting the database by hand.
    id = models.CharField(primary_key=True, max_length=64)
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="backends")
    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    weight = models.PositiveIntegerField(default=1)
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(default=False)
    health_mode = models.CharField(
        max_length=16, choices=HealthMode.choices, default=HealthMode.LIVENESS
    )
    health = models.JSONField(default=dict, blank=True)
    tls = models.JSONField(null=True, blank=True)
    # A keyed hash of the token this backend presents when it reports storage commitment
    # over HTTP (pools.tokens), never the token itself; "" for none.
    commitment_token = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        ordering = ["pool_id", "id"]

    def __str__(self) -> str:
        return f"{self.id} ({self.ae_title}@{self.host}:{self.port})"

    @property
    def load_is_reported(self) -> bool:
        return self.health_mode != self.HealthMode.LIVENESS

    @property
    def health_config(self) -> HealthConfig:
        """The ``Health`` section as the config file gave it (kept here as JSON)."""
        return HealthConfig.model_validate(self.health or {"Mode": self.health_mode})

    @property
    def client_tls(self) -> ClientTls | None:
        """How SynthIQ reaches this backend over TLS (None: plain DICOM)."""
        if not self.tls:
            return None
        tls = TlsConfig.model_validate(self.tls)
        return ClientTls(ca=tls.ca, certificate=tls.certificate, key=tls.key)
