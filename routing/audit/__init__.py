"""IHE ATNA audit trail: DICOM PS3.15 A.5 audit messages over syslog (RFC 5424 on RFC 5425
TLS or RFC 5426 UDP) to the site's audit record repository (the config's ``Audit`` block).

``messages`` builds the XML (pure), ``transport`` frames and sends it from a bounded queue on
its own thread (spooling to a file over TLS while the repository is away), ``trail`` is what
the rest of SynthIQ calls, ``signals`` reports the web app's logins and logouts.
"""

from __future__ import annotations

import ssl
from typing import Any

from django.conf import settings

from pools.config import AuditConfig
from routing.audit.trail import NULL_TRAIL, AuditTrail, TrailSettings, current, install

__all__ = ["NULL_TRAIL", "AuditTrail", "current", "install", "trail_start"]


def _tls(config: AuditConfig) -> ssl.SSLContext:
    assert config.tls is not None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls.certificate and config.tls.key:
        context.load_cert_chain(config.tls.certificate, config.tls.key)
    return context


def trail_start(config: AuditConfig | None, *, spool_name: str) -> Any:
    """This process's audit trail, started (or the null trail when audit is off). Each
    process has its own queue and its own spool file, ``var/audit/<spool_name>.spool``: a
    process started again under the same name sends what its predecessor left."""
    if config is None:
        return NULL_TRAIL
    trail = AuditTrail(TrailSettings(
        transport=config.transport, host=config.host, port=config.effective_port,
        tls=_tls(config) if config.transport == "tls" else None, site_id=config.site_id,
        spool_path=settings.VAR_DIR / "audit" / f"{spool_name}.spool",
        spool_limit=settings.SYNTHIQ_AUDIT_SPOOL_BYTES, queue_size=settings.SYNTHIQ_AUDIT_QUEUE))
    return trail.start()
