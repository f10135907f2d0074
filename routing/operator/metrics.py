"""Prometheus exposition built at scrape time from what the runproxy processes published
and from the pools' and backends' health rows (no in-process registry: the web process
is not the one routing).

Counters carry a ``process`` label: each runproxy's counters are monotonic on their own,
so ``sum(rate(...))`` stays correct across a process restart.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from affinity import selectors as affinity_selectors
from affinity.models import Verdict
from pools import selectors as pool_selectors
from routing.counters import OK_STATUS_CLASSES, Counts, Snapshot, is_failure, snapshot_of
from routing.models import ProxyProcess
from routing.operator import selectors
from routing.waterfall import TIERS
from synthiq_project.version import VERSION

# The failure classes of the statuses SynthIQ itself returns (routing.dicom.status): 0xA7xx
# (refused: out of resources, backend unreachable or cut), 0xC0xx (cannot understand), 0x01xx
# (SOP class not supported); and the services besides storage.
KNOWN_FAILURE_CLASSES = ("0xA7xx", "0xC0xx", "0x01xx")
KNOWN_SERVICES = ("C-FIND", "C-MOVE", "C-GET", "N-ACTION", "N-EVENT-REPORT")
# Why an association is refused (routing.relay: inbound._refusal, server._opened, the TLS
# handshake, the idle limit) and which identifiers a request is refused for (per service):
# the label sets of synthiq_associations_rejected and synthiq_invalid_requests, at zero.
KNOWN_REJECT_REASONS = ("source-address", "called-ae", "calling-ae", "association-limit", "address-limit",
                        "tls-handshake", "tls-plaintext", "protocol-version", "application-context", "stopping", "idle")
KNOWN_INVALID = (("C-STORE", "study-uid"), ("C-STORE", "sop-instance-uid"),
                 *((service, reason) for service in ("C-FIND", "C-MOVE", "C-GET")
                   for reason in ("identifier", "study-uid", "series-uid", "sop-instance-uid")),
                 ("N-ACTION", "referenced-uid"), ("N-EVENT-REPORT", "referenced-uid"))


_Kind = type[CounterMetricFamily] | type[GaugeMetricFamily] | type[HistogramMetricFamily]
# Each runproxy process's metrics (key: kind, name, help, labels besides "process"), exported in this order.
PROCESS_METRICS: dict[str, tuple[_Kind, str, str, tuple[str, ...]]] = {
    "routed": (CounterMetricFamily, "synthiq_instances_routed", "C-STOREs routed, by routing tier", ("tier",)),
    "decisions": (CounterMetricFamily, "synthiq_routing_decisions",
                  "Routing decisions (first instance of a study on an association)", ()),
    "received": (CounterMetricFamily, "synthiq_instances_received", "C-STOREs received", ()),
    "responses": (CounterMetricFamily, "synthiq_forward_responses",
                  "C-STORE outcomes by status class (success, warning, 0xA7xx...)", ("status_class",)),
    "failures": (CounterMetricFamily, "synthiq_forward_failures",
                 "C-STOREs that ended in a failure status, by status class", ("status_class",)),
    "operations": (CounterMetricFamily, "synthiq_operations",
                   "Query, retrieve and storage commitment operations by service and status class",
                   ("service", "status_class")),
    "associations": (CounterMetricFamily, "synthiq_associations", "Inbound associations accepted", ()),
    "rejected": (CounterMetricFamily, "synthiq_associations_rejected",
                 "Inbound associations rejected (A-ASSOCIATE-RJ), by reason", ("reason",)),
    "invalid": (CounterMetricFamily, "synthiq_invalid_requests",
                "Requests refused for an identifier that is not a valid UID, by service and what was invalid "
                "(nothing of them is kept)", ("service", "reason")),
    "violations": (CounterMetricFamily, "synthiq_backend_violations",
                   "Backend responses that did not answer the request in flight (another Message ID, SOP Class or "
                   "SOP Instance): failed to the requester, the backend association aborted", ()),
    "open": (GaugeMetricFamily, "synthiq_open_associations", "Inbound associations open now", ()),
    "held": (GaugeMetricFamily, "synthiq_held_associations",
             "Associations held now while their study's backend is unreachable", ()),
    "holds": (CounterMetricFamily, "synthiq_holds",
              "Times an association was held while its study's backend was unreachable", ()),
    "cache": (GaugeMetricFamily, "synthiq_affinity_cache_entries", "Entries in the hot affinity cache", ()),
    "db_ok": (GaugeMetricFamily, "synthiq_database_ok", "1 when the process can reach the affinity database", ()),
    "pending": (GaugeMetricFamily, "synthiq_pending_bindings",
                "Bindings held in memory until the database is back", ()),
    "listening": (GaugeMetricFamily, "synthiq_listener_accepting",
                  "1 when the pool's DICOM listener accepts associations", ("pool",)),
    "latency": (HistogramMetricFamily, "synthiq_forward_latency_seconds",
                "Time from receiving a C-STORE to the backend's response", ("backend",)),
    "audit": (CounterMetricFamily, "synthiq_audit_messages",
              "Audit messages (ATNA) by outcome: sent to the audit record repository, spooled while it was away, "
              "dropped (queue or spool full); zero when audit is off", ("outcome",)),
    "audit_spool": (GaugeMetricFamily, "synthiq_audit_spool_bytes",
                    "Audit messages waiting in the spool file for the repository", ()),
}


def _add_counts(families: dict[str, Any], process: str, counts: Counts) -> None:
    """The counters of one process. The label sets a dashboard or an alert reads are exported
    at zero from the start, so rate() sees the first failure (Prometheus: "avoid missing metrics")."""
    for tier, value in counts.routed(TIERS).items():
        families["routed"].add_metric([process, tier], value)
    for key, name in (("decisions", "decisions"), ("received", "received"), ("associations", "associations"),
                      ("violations", "backend_violations"), ("holds", "held")):
        families[key].add_metric([process], counts[name])
    for reason, value in sorted((dict.fromkeys(KNOWN_REJECT_REASONS, 0) | counts.rejected()).items()):
        families["rejected"].add_metric([process, reason], value)
    for (service, what), value in sorted((dict.fromkeys(KNOWN_INVALID, 0) | counts.invalid()).items()):
        families["invalid"].add_metric([process, service, what], value)
    known = dict.fromkeys((*OK_STATUS_CLASSES, *KNOWN_FAILURE_CLASSES), 0)
    for cls, value in sorted((known | counts.statuses()).items()):
        families["responses"].add_metric([process, cls], value)
        if is_failure(cls):
            families["failures"].add_metric([process, cls], value)
    by_service = counts.operations()
    for service in sorted(set(KNOWN_SERVICES) | set(by_service)):
        for cls, value in ({"success": 0} | by_service.get(service, {})).items():
            families["operations"].add_metric([process, service, cls], value)


def _add_state(families: dict[str, Any], p: ProxyProcess, snap: Snapshot) -> None:
    """What one process holds now: open and held associations, cache, database, listeners, audit."""
    for key, value in (("open", snap.get("open_associations")), ("held", snap.get("held_associations")),
                       ("cache", snap.get("cache_size")), ("pending", snap.get("pending_bindings"))):
        families[key].add_metric([p.id], value or 0)
    families["db_ok"].add_metric([p.id], 0 if snap.get("db_ok") is False else 1)
    for listener in p.listeners or []:
        families["listening"].add_metric([p.id, str(listener.get("pool", ""))], 1 if listener.get("accepting") else 0)
    audit_stats = snap.get("audit") or {}
    for outcome in ("sent", "spooled", "dropped"):
        families["audit"].add_metric([p.id, outcome], audit_stats.get(outcome, 0))
    families["audit_spool"].add_metric([p.id], audit_stats.get("spool_bytes", 0))


def _add_latency(latency: HistogramMetricFamily, process: str, snap: Snapshot, backend_ids: list[str]) -> None:
    """One process's forward-latency histograms: every configured backend has its own, at
    zero until its first C-STORE."""
    bounds = snap.get("latency_buckets") or []
    per_backend = snap.get("backends") or {}
    zero = [0] * (len(bounds) + 1)
    for backend_id, counts in sorted((dict.fromkeys(backend_ids, zero) | (snap.get("latency") or {})).items()):
        if len(counts) != len(bounds) + 1:
            continue
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, map(float, bounds)), "+Inf"], counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        total = float((per_backend.get(backend_id) or {}).get("forward_seconds", 0.0))
        latency.add_metric([process, backend_id], buckets, total)


class SynthIQCollector:
    """A prometheus_client collector (anything with ``collect()``)."""

    def __init__(self, *, now: dt.datetime | None = None):
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or dt.datetime.now(dt.UTC)
        processes = selectors.proxy_processes_live(now=now)
        backend_ids = sorted(b.id for pool in pool_selectors.pools_with_backends() for b in pool.backends.all())
        yield from self._per_process(processes, backend_ids)
        totals = selectors.proxy_totals(processes=processes)
        yield from self._backends(now, totals)
        yield self._verdicts()

    def _per_process(self, processes: list[ProxyProcess], backend_ids: list[str]) -> Iterator[Metric]:
        families = {key: kind(name, documentation, labels=["process", *labels])
                    for key, (kind, name, documentation, labels) in PROCESS_METRICS.items()}
        for p in processes:
            snap = snapshot_of(p.counters)
            _add_counts(families, p.id, Counts(snap.get("counters")))
            _add_state(families, p, snap)
            _add_latency(families["latency"], p.id, snap, backend_ids)
        yield from families.values()
        build = InfoMetricFamily("synthiq_build", "SynthIQ's version")
        build.add_metric([], {"version": VERSION, "python": platform.python_version()})
        yield build
        up = GaugeMetricFamily("synthiq_proxy_processes", "runproxy processes that published in the last 10 s")
        up.add_metric([], len(processes))
        yield up

    @staticmethod
    def _verdicts() -> Metric:
        """Studies by verdict per pool; every verdict of every enabled pool from zero (the alert reads missing)."""
        verdicts = GaugeMetricFamily("synthiq_study_verdicts", "Bound studies by their last verdict (whole, split, "
                                     "missing, unverified)", labels=["pool", "verdict"])
        counts = {(p.id, v.value): 0 for p in pool_selectors.pools_enabled() for v in Verdict}
        counts |= affinity_selectors.verdict_counts()
        for (pool_id, verdict), n in sorted(counts.items()):
            verdicts.add_metric([pool_id, verdict], n)
        return verdicts

    def _backends(self, now: dt.datetime, totals: selectors.ProxyTotals) -> Iterator[Metric]:
        healthy = GaugeMetricFamily("synthiq_backend_healthy", "1 when the backend is healthy as the router sees it",
                                    labels=["pool", "backend", "mode"])
        load = GaugeMetricFamily("synthiq_backend_load",
                                 "Normalized load (depth / capacity); absent when unknown (liveness, no report)",
                                 labels=["pool", "backend"])
        draining = GaugeMetricFamily(
            "synthiq_backend_draining", "1 when the backend is draining", labels=["pool", "backend"]
        )
        enabled = GaugeMetricFamily("synthiq_backend_enabled", "1 when the backend is enabled in the config",
                                    labels=["pool", "backend"])
        weight = GaugeMetricFamily("synthiq_backend_weight", "Configured weight", labels=["pool", "backend"])
        forwarded = CounterMetricFamily("synthiq_backend_forwarded",
                                        "C-STOREs the backend answered, summed over live processes",
                                        labels=["pool", "backend"])
        for pool in selectors.pools_overview(now=now, totals=totals):
            for b in pool["backends"]:
                labels = [pool["id"], b["id"]]
                healthy.add_metric([*labels, b["health_mode"]], 1 if b["health"]["healthy"] else 0)
                if b["health"]["load"] is not None:
                    load.add_metric(labels, b["health"]["load"])
                draining.add_metric(labels, 1 if b["draining"] else 0)
                enabled.add_metric(labels, 1 if b["enabled"] else 0)
                weight.add_metric(labels, b["weight"])
                forwarded.add_metric(labels, b["counters"]["forwarded"])
        yield from (healthy, load, draining, enabled, weight, forwarded)
        status = selectors.heartbeat_state(
            now=now, totals=totals, pool_ids=[p.id for p in pool_selectors.pools_enabled()]
        )
        stale = GaugeMetricFamily("synthiq_heartbeat_stale", "1 when no heartbeat round ran recently")
        stale.add_metric([], 1 if status["stale"] else 0)
        yield stale
        age = GaugeMetricFamily("synthiq_heartbeat_round_age_seconds", "Age of the pool's last heartbeat round",
                                labels=["pool"])
        for entry in status["pools"]:
            if entry["age_seconds"] is not None:
                age.add_metric([entry["pool"]], entry["age_seconds"])
        yield age
