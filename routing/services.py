"""Writes to routing activity."""

from __future__ import annotations

import datetime as dt
import logging

from routing.models import ProxyProcess, RoutingDecision

logger = logging.getLogger("synthiq.routing")

# Decisions stay for the study cache window's order of magnitude: long enough to answer
# "where did yesterday's study go and why", short enough that the table stays small.
DECISIONS_KEPT = dt.timedelta(days=7)
# A proxy process that has not published for a day is gone (crashed or decommissioned).
PROCESSES_KEPT = dt.timedelta(days=1)


def routing_activity_purge(*, now: dt.datetime) -> tuple[int, int]:
    """Delete decisions older than DECISIONS_KEPT and processes silent for PROCESSES_KEPT."""
    decisions, _ = RoutingDecision.objects.filter(at_utc__lt=now - DECISIONS_KEPT).delete()
    processes, _ = ProxyProcess.objects.filter(updated_utc__lt=now - PROCESSES_KEPT).delete()
    if decisions or processes:
        logger.info("purged %d routing decisions and %d silent proxy processes", decisions, processes)
    return decisions, processes
