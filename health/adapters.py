"""Shipped health adapters: normalizers from a vendor's own metrics to the common load scale.

An adapter is a function ``(Target, timeout) -> Reading`` registered under the name the
config's ``Health.Adapter`` uses. It raises ``ProbeError`` for a failed heartbeat.
"""

from __future__ import annotations

import logging
import math

from prometheus_client.parser import text_string_to_metric_families

from health.probes import (
    ProbeError,
    Reading,
    Target,
    adapter_register,
    health_url,
    http_get,
    load_normalize,
)

logger = logging.getLogger("synthiq.health")

# Orthanc runs this many jobs at once unless its "ConcurrentJobs" option says otherwise
# (Orthanc Book, configuration reference). Orthanc's REST API does not expose the option,
# so this is the denominator unless the backend's Health.Capacity gives the site's value;
# a deployment that raised ConcurrentJobs without saying so reads busier than it is, which
# errs on the side of not flooding it.
ORTHANC_CONCURRENT_JOBS = 2


@adapter_register("orthanc")
def orthanc_health(target: Target, timeout: float) -> Reading:
    """Orthanc's /tools/metrics-prometheus (Orthanc >= 1.5.4, "MetricsEnabled": true, the
    default). Work in flight is its jobs engine (pending + running: retrieves, sends to
    modalities, modifications, archives) plus REST requests being served (uploads via
    POST /instances or STOW-RS), minus the one request this probe itself is."""
    url = health_url(target).rstrip("/") + "/tools/metrics-prometheus"
    _, body = http_get(url=url, timeout=timeout, health=target.health)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProbeError("Orthanc metrics are not UTF-8 text") from None
    try:
        # Orthanc's metrics are unlabelled samples; a NaN or infinite one is as good as absent.
        metrics = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.labels and math.isfinite(sample.value)
        }
    except Exception as exc:  # the parser raises ValueError, and IndexError on some malformed labels
        raise ProbeError(f"Orthanc metrics are not in the Prometheus text format: {exc}") from None
    needed = ("orthanc_jobs_pending", "orthanc_jobs_running")
    missing = [name for name in needed if name not in metrics]
    if missing:
        raise ProbeError(f"Orthanc metrics lack {', '.join(missing)} (is MetricsEnabled false?)")
    jobs = int(metrics["orthanc_jobs_pending"] + metrics["orthanc_jobs_running"])
    rest = max(0, int(metrics.get("orthanc_rest_api_active_requests", 1)) - 1)
    depth = jobs + rest
    capacity = target.health.capacity or ORTHANC_CONCURRENT_JOBS
    load, note = load_normalize(load=None, depth=depth, denominator=capacity)
    detail = {
        "jobs_pending": int(metrics["orthanc_jobs_pending"]),
        "jobs_running": int(metrics["orthanc_jobs_running"]),
        "rest_active_requests": rest,
        "count_instances": int(metrics.get("orthanc_count_instances", 0)),
        "disk_size_mb": metrics.get("orthanc_disk_size_mb"),
    }
    return Reading(load=load, queue_depth=depth, capacity=capacity, detail=detail, load_note=note)
