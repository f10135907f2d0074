"""Reads for the admin surface: what the runproxy processes published, merged with the
pools, backends and health rows they route over.

Each runproxy process publishes a snapshot of its counters every ~2 s (routing/telemetry.py);
the web process may be another process or host, so everything here comes from the
database, never from memory.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, QuerySet, Sum

from health import selectors as health_selectors
from health.models import BackendHealth
from pools import selectors as pool_selectors
from pools.config import DEFAULTS
from pools.models import Backend
from routing.counters import Counts, failed, routed, snapshot_of
from routing.dicom import status as dimse
from routing.models import FailedOperation, ProxyProcess, RejectedAssociation, RoutingDecision
from routing.telemetry import CONTEXTS_REFUSED, RATE_SAMPLES
from routing.waterfall import ASSOCIATION_CACHED, TIERS
from synthiq_project.queries import filtered
from synthiq_project.version import VERSION

# A process that has not published for five publish intervals is gone (crashed or
# partitioned): its counters no longer describe anything live.
LIVE_PROCESS_SECONDS = 10.0

# The calling AE table lists at most this many, most recently seen first.
CALLING_AES_SHOWN = 100
# How the dashboard names each routing tier (the ids are routing.waterfall's).
TIER_LABELS = {
    "affinity-hit": "affinity hit", "least-busy": "least busy", "weighted": "weighted",
    "association-cached": "association cached", "fallback": "fallback", "rendezvous": "hashed (database down)",
}


# What a C-STORE failure status means (PS3.4 B.2.3, PS3.7 C), and, for the ones SynthIQ makes
# up itself, what made it answer so.
STORE_STATUS_MEANINGS = {
    0x0110: "Processing failure",
    0x0111: "Duplicate SOP Instance",
    0x0117: "Invalid SOP Instance",
    0x0122: "Refused: SOP Class not supported",
    0x0124: "Refused: Not authorized",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognized operation",
    0x0212: "Mistyped argument",
    0x0213: "Resource limitation",
}
STORE_STATUS_RANGES = ((0xA700, 0xA7FF, "Refused: Out of resources"),
                       (0xA900, 0xA9FF, "Error: Data Set does not match SOP Class"),
                       (0xC000, 0xCFFF, "Error: Cannot understand"))
SYNTHIQ_STATUS_CAUSES = {
    dimse.OUT_OF_RESOURCES: "no enabled backend in the pool could take the study",
    dimse.BACKEND_UNREACHABLE: "the study's backend is unreachable or refused the association",
    dimse.BACKEND_NO_RESPONSE: "the backend aborted, reset or timed out mid-operation",
    dimse.SOP_CLASS_NOT_SUPPORTED: "the backend refused the SOP class or transfer syntax",
    dimse.CANNOT_UNDERSTAND: "the header is unreadable or its Study/SOP Instance UID is missing or invalid",
    dimse.UID_BEYOND_HOLD: "the Study Instance UID is not within the bytes SynthIQ holds",
}
# How the dashboard names each reason an association was turned away.
REJECTION_LABELS = {
    "called-ae": "called AE title not this pool's", "calling-ae": "calling AE title not allowed",
    "association-limit": "too many associations (Network.MaxAssociations)",
    "address-limit": "too many associations from this address (Network.MaxAssociationsPerAddress)",
    "stopping": "runproxy stopping", "protocol-version": "unsupported protocol version",
    "application-context": "not the DICOM application context", "source-address": "source not allowed",
    "tls-plaintext": "plain DICOM on the TLS port", "tls-handshake": "TLS handshake failed",
    CONTEXTS_REFUSED: "service not offered (presentation context refused)",
}
# A pool's non-storage services as the dashboard names them, keyed as Pools[].Services spells them.
SERVICE_LABELS = {"find": "C-FIND", "move": "C-MOVE", "get": "C-GET", "storage_commitment": "Storage commitment"}
# The counters (telemetry.operation) of each service, keyed by the command that carries it.
SERVICE_COMMANDS = {"find": "C-FIND", "move": "C-MOVE", "get": "C-GET", "storage_commitment": "N-ACTION"}


def store_status_meaning(code: int) -> str:
    """What a C-STORE status means, as PS3.4 names it (its range when no code of its own)."""
    if code in STORE_STATUS_MEANINGS:
        return STORE_STATUS_MEANINGS[code]
    for low, high, meaning in STORE_STATUS_RANGES:
        if low <= code <= high:
            return meaning
    if code in dimse.WARNINGS:
        return "Warning"
    return "Failure"


@dataclass
class ProxyTotals:
    """The published snapshots of several live processes, added up."""

    counters: Counter[str] = field(default_factory=Counter)
    backends: dict[str, Counter[str]] = field(default_factory=dict)
    latency_buckets: list[float] = field(default_factory=list)
    latency: dict[str, list[int]] = field(default_factory=dict)
    open_associations: int = 0
    cache_size: int = 0
    pending_bindings: int = 0
    db_errors: list[dict[str, str]] = field(default_factory=list)
    heartbeat_interval: float | None = None
    heartbeat_timeout: float | None = None
    heartbeat_stale: bool | None = None
    heartbeat_modes: set[str] = field(default_factory=set)
    # pool id -> service -> what the processes published (the first one that did, per pool)
    services: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def proxy_processes_live(*, now: dt.datetime) -> list[ProxyProcess]:
    cutoff = now - dt.timedelta(seconds=LIVE_PROCESS_SECONDS)
    return list(ProxyProcess.objects.filter(stopped=False, updated_utc__gte=cutoff).order_by("id"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def proxy_totals(*, processes: list[ProxyProcess]) -> ProxyTotals:
    """Add up what each process published. Tolerant of missing keys: processes of an
    older version publish fewer of them."""
    totals = ProxyTotals()
    for p in processes:
        snap = snapshot_of(p.counters)
        totals.counters.update({k: v for k, v in (snap.get("counters") or {}).items() if _number(v) is not None})
        for backend_id, counters in (snap.get("backends") or {}).items():
            totals.backends.setdefault(backend_id, Counter()).update(counters)
        buckets = snap.get("latency_buckets") or []
        if buckets and not totals.latency_buckets:
            totals.latency_buckets = list(buckets)
        if buckets == totals.latency_buckets:
            for backend_id, counts in (snap.get("latency") or {}).items():
                mine = totals.latency.setdefault(backend_id, [0] * len(counts))
                if len(mine) == len(counts):
                    totals.latency[backend_id] = [a + b for a, b in zip(mine, counts, strict=True)]
        totals.open_associations += int(snap.get("open_associations") or 0)
        totals.cache_size += int(snap.get("cache_size") or 0)
        totals.pending_bindings += int(snap.get("pending_bindings") or 0)
        if snap.get("db_ok") is False:
            totals.db_errors.append({"process": p.id, "error": str(snap.get("db_error") or "")})
        interval = _number(snap.get("heartbeat_interval"))
        if interval:
            totals.heartbeat_interval = max(totals.heartbeat_interval or 0.0, interval)
        timeout = _number(snap.get("heartbeat_timeout"))
        if timeout:
            totals.heartbeat_timeout = max(totals.heartbeat_timeout or 0.0, timeout)
        if snap.get("heartbeat_mode"):
            totals.heartbeat_modes.add(str(snap["heartbeat_mode"]))
        if isinstance(snap.get("heartbeat_stale"), bool):
            totals.heartbeat_stale = bool(totals.heartbeat_stale) or snap["heartbeat_stale"]
        for pool_id, services in (snap.get("services") or {}).items():
            if isinstance(services, dict):
                totals.services.setdefault(pool_id, services)
    return totals


def backend_counters(*, counters: Counter[str] | None) -> dict[str, Any]:
    counts = Counts(counters)
    forwarded = counts["forwarded"]
    seconds = float((counters or {}).get("forward_seconds", 0.0))
    return {
        "forwarded": forwarded,
        "failed": counts.failed(),
        "statuses": counts.statuses(),
        "mean_forward_ms": round(seconds / forwarded * 1000, 2) if forwarded else None,
    }


def backend_health_view(
    *, backend: Backend, row: BackendHealth | None, now: dt.datetime, timeout_seconds: float
) -> dict[str, Any]:
    """A backend's health as the router sees it: healthy only with a good heartbeat within
    the timeout. Load is null (unknown) for liveness backends and before any report."""
    healthy = health_selectors.backend_is_healthy(row=row, now=now, timeout_seconds=timeout_seconds)
    if row is None or row.last_check_utc is None and row.last_ok_utc is None:
        state = "unknown"
    elif healthy:
        state = "healthy"
    elif row.healthy:
        state = "stale"  # the last heartbeat was good, but too long ago
    else:
        state = "unhealthy"
    return {
        "state": state,
        "healthy": healthy,
        # The router stopped trusting it after its last good heartbeat; null when healthy,
        # never checked, or never answered (then last_check_utc says since when it is tried).
        "down_since_utc": row.last_ok_utc if row is not None and state in ("unhealthy", "stale") else None,
        # A down backend's last load is history, not its load: unknown (never 0).
        "load": row.load if (row is not None and backend.load_is_reported and state == "healthy") else None,
        "queue_depth": row.queue_depth if (row is not None and state == "healthy") else None,
        "capacity": row.capacity if row is not None else None,
        "last_ok_utc": row.last_ok_utc if row is not None else None,
        "last_check_utc": row.last_check_utc if row is not None else None,
        "last_error": row.last_error if row is not None else "",
    }


def _timeout(totals: ProxyTotals) -> float:
    return totals.heartbeat_timeout or DEFAULTS["heartbeat_timeout_seconds"]


def pool_services(*, pool_id: str, totals: ProxyTotals, counters: dict[str, Any]) -> list[dict[str, Any]]:
    """A pool's non-storage services: offered (passed to its backends) or not, and why not;
    with the operations counted so far."""
    published = totals.services.get(pool_id)
    operations = Counts(counters).operations()
    out = []
    for name, label in SERVICE_LABELS.items():
        seen = (published or {}).get(name) or {}
        offered = bool(seen.get("passed"))
        if published is None:
            why = "unknown: no runproxy process serving this pool is publishing"
        elif offered:
            why = "offered by " + ", ".join(seen.get("offered_by") or ["a backend"])
        elif not seen.get("switched_on"):
            why = f"switched off in Pools[{pool_id}].Services"
        elif seen.get("not_asked") and not seen.get("offered_by"):
            why = f"no backend asked offers {label}; not asked yet (down): " + ", ".join(seen["not_asked"])
        else:
            why = f"no backend offers {label}"
        classes = operations.get(SERVICE_COMMANDS[name], {})
        out.append({
            "service": name, "label": label, "offered": offered, "known": published is not None, "why": why,
            "operations": sum(classes.values()),
            "failed": failed(classes),
        })
    return out


def pool_degraded(*, backends: list[dict[str, Any]], database_ok: bool, heartbeat_stale: bool) -> list[str]:
    """Why a pool is degraded (empty when it is not): backends down, the database away, heartbeats stale."""
    reasons = []
    down = [b for b in backends if b["enabled"] and b["health"]["state"] in ("unhealthy", "stale")]
    for b in down:
        reasons.append(f"backend {b['id']} is down" + (f": {b['health']['last_error']}" if b["health"]["last_error"]
                                                        else ""))
    in_service = [b for b in backends if b["enabled"] and not b["draining"] and b["health"]["state"] == "healthy"]
    if backends and not in_service:
        reasons.append("no backend in service: new studies fail")
    if not database_ok:
        reasons.append("the database is unreachable")
    if heartbeat_stale:
        reasons.append("heartbeats are stale: backend health may be out of date")
    return reasons


def pools_overview(*, now: dt.datetime, totals: ProxyTotals | None = None) -> list[dict[str, Any]]:
    """Pools with their backends: configuration, runtime state, health and live counters;
    their services, and why each is degraded."""
    if totals is None:
        totals = proxy_totals(processes=proxy_processes_live(now=now))
    heartbeat = heartbeat_state(now=now, totals=totals, pool_ids=[p.id for p in pool_selectors.pools_enabled()])
    stale_pools = {p["pool"] for p in heartbeat["pools"] if p["stale"]}
    rows = health_selectors.backend_health_all()
    out = []
    for pool in pool_selectors.pools_with_backends():
        backends = []
        for b in sorted(pool.backends.all(), key=lambda b: b.id):
            backends.append(
                {
                    "id": b.id,
                    "ae_title": b.ae_title,
                    "host": b.host,
                    "port": b.port,
                    "weight": b.weight,
                    "enabled": b.enabled,
                    "draining": b.draining,
                    "health_mode": b.health_mode,
                    "load_reported": b.load_is_reported,
                    "health": backend_health_view(
                        backend=b, row=rows.get(b.id), now=now, timeout_seconds=_timeout(totals)
                    ),
                    "counters": backend_counters(counters=totals.backends.get(b.id)),
                }
            )
        out.append(
            {
                "id": pool.id,
                "ae_title": pool.ae_title,
                "host": pool.host,
                "port": pool.port,
                "enabled": pool.enabled,
                "backends": backends,
                "services": pool_services(pool_id=pool.id, totals=totals, counters=totals.counters),
                "degraded": pool_degraded(
                    backends=backends, database_ok=not totals.db_errors,
                    heartbeat_stale=bool(heartbeat["stale"] if heartbeat["source"] == "proxy"
                                         else pool.id in stale_pools)) if pool.enabled else [],
            }
        )
    return out


def heartbeat_state(*, now: dt.datetime, totals: ProxyTotals, pool_ids: list[str]) -> dict[str, Any]:
    """Stale when a pool's last heartbeat round is missing or older than health_selectors.STALE_INTERVALS
    intervals (nothing runs the heartbeats: beat died, inline runner stuck). A flag the
    proxies publish themselves takes precedence when present."""
    interval = totals.heartbeat_interval or DEFAULTS["heartbeat_interval_seconds"]
    rounds = health_selectors.heartbeat_rounds_all()
    pools = []
    for pool_id in pool_ids:
        last = rounds.get(pool_id)
        age = (now - last).total_seconds() if last else None
        pools.append(
            {
                "pool": pool_id,
                "last_round_utc": last,
                "age_seconds": round(age, 1) if age is not None else None,
                "stale": age is None or age > health_selectors.STALE_INTERVALS * interval,
            }
        )
    from_rounds = any(p["stale"] for p in pools)
    published = totals.heartbeat_stale
    return {
        "stale": published if published is not None else from_rounds,
        "source": "proxy" if published is not None else "database",
        "mode": ",".join(sorted(totals.heartbeat_modes)),
        "interval_seconds": interval,
        "pools": pools,
    }


def rate_series(*, processes: list[ProxyProcess], now: dt.datetime) -> dict[str, Any]:
    """Rates per sampling slot over the last RATE_SAMPLES slots, added up over the live
    processes. Each process samples its cumulative counters on the same wall-clock slots
    (routing/telemetry.py); a rate is the difference between two consecutive samples of one
    process over the time between them, credited to the later slot."""
    interval = max((_number((snapshot_of(p.counters).get("rates") or {}).get("interval_seconds")) or 0.0
                    for p in processes), default=0.0) or settings.SYNTHIQ_RATE_SAMPLE_SECONDS
    since = now.timestamp() - interval * RATE_SAMPLES
    points: dict[float, dict[str, Any]] = {}
    for p in processes:
        samples = (snapshot_of(p.counters).get("rates") or {}).get("samples") or []
        for before, after in zip(samples, samples[1:], strict=False):
            seconds = after["at"] - before["at"]
            if seconds <= 0 or after["t"] < since:
                continue
            point = points.setdefault(after["t"], {"instances": 0, "bytes": 0, "failures": 0, "backends": {}})
            point["instances"] += max(0, after["received"] - before["received"]) / seconds
            point["bytes"] += max(0, after["bytes"] - before["bytes"]) / seconds
            point["failures"] += max(0, after["failed"] - before["failed"]) / seconds
            for backend_id, now_b in after["backends"].items():
                then_b = before["backends"].get(backend_id, {"forwarded": 0, "bytes": 0})
                mine = point["backends"].setdefault(backend_id, {"instances": 0, "bytes": 0})
                mine["instances"] += max(0, now_b["forwarded"] - then_b["forwarded"]) / seconds
                mine["bytes"] += max(0, now_b["bytes"] - then_b["bytes"]) / seconds
    return {
        "interval_seconds": interval,
        "points": [
            {
                "t": dt.datetime.fromtimestamp(t, dt.UTC),
                "instances_per_s": round(point["instances"], 3),
                "mb_per_s": round(point["bytes"] / 1e6, 3),
                "failures_per_s": round(point["failures"], 3),
                "backends": {
                    backend_id: {"instances_per_s": round(b["instances"], 3), "mb_per_s": round(b["bytes"] / 1e6, 3)}
                    for backend_id, b in sorted(point["backends"].items())
                },
            }
            for t, point in sorted(points.items())
        ],
    }


def calling_aes_summary() -> list[dict[str, Any]]:
    """Who sends: per calling AE title, the studies routed, when last seen and to which
    backends, over the routing decisions kept (routing.services.DECISIONS_KEPT); and how
    often it was rejected, over the rejected associations kept."""
    rows = list(
        RoutingDecision.objects.values("calling_ae")
        .annotate(studies=Count("study_uid", distinct=True), last_seen_utc=Max("at_utc"))
        .order_by("-last_seen_utc", "calling_ae")[:CALLING_AES_SHOWN]
    )
    backends: dict[str, set[str]] = {}
    pairs = RoutingDecision.objects.filter(calling_ae__in=[r["calling_ae"] for r in rows])
    for calling_ae, backend_id in pairs.values_list("calling_ae", "backend_id").order_by().distinct():
        backends.setdefault(calling_ae, set()).add(backend_id)
    out = {r["calling_ae"]: r | {"backends": sorted(backends.get(r["calling_ae"], ())), "rejected": 0,
                                 "rejected_last_utc": None} for r in rows}
    # Callers turned away (A-ASSOCIATE-RJ) appear too: a modality set up wrong sends nothing routed.
    rejected = (RejectedAssociation.objects.exclude(calling_ae="").exclude(reason=CONTEXTS_REFUSED)
                .values("calling_ae").annotate(n=Sum("count"), last=Max("last_seen_utc"))
                .order_by("-last")[:CALLING_AES_SHOWN])
    for r in rejected:
        row = out.setdefault(r["calling_ae"], {"calling_ae": r["calling_ae"], "studies": 0, "backends": [],
                                               "last_seen_utc": r["last"]})
        row["rejected"], row["rejected_last_utc"] = int(r["n"]), r["last"]
        row["last_seen_utc"] = max(row["last_seen_utc"], r["last"])
    return sorted(out.values(), key=lambda r: (-r["last_seen_utc"].timestamp(), r["calling_ae"]))[:CALLING_AES_SHOWN]


def _listeners(processes: list[ProxyProcess]) -> list[dict[str, Any]]:
    """Every DICOM listener the live processes published, and whether it accepts."""
    return [
        {"process": p.id, "pool": str(listener.get("pool", "")), "ae_title": str(listener.get("ae_title", "")),
         "port": listener.get("port"), "accepting": bool(listener.get("accepting"))}
        for p in processes for listener in p.listeners or []
    ]


def _process_view(process: ProxyProcess) -> dict[str, Any]:
    snap = snapshot_of(process.counters)
    return {"id": process.id, "started_utc": process.started_utc, "updated_utc": process.updated_utc,
            "db_ok": snap.get("db_ok") is not False, "cache_size": int(snap.get("cache_size") or 0),
            "open_associations": int(snap.get("open_associations") or 0)}


def _counters_view(totals: ProxyTotals) -> dict[str, Any]:
    """The live processes' counters added up, as /api/status shows them."""
    counts = Counts(totals.counters)
    statuses = counts.statuses()
    return {
        "received": counts["received"], "succeeded": statuses.get("success", 0), "warnings": statuses.get("warning", 0),
        "failed": counts.failed(), "associations": counts["associations"],
        "open_associations": totals.open_associations, "decisions": counts["decisions"],
        "cache_hits": counts[routed(ASSOCIATION_CACHED)], "routed": counts.routed(TIERS), "statuses": statuses,
        "operations": counts.operations(), "held": counts["held"], "rejected": counts.rejected(),
    }


def status_snapshot(*, now: dt.datetime) -> dict[str, Any]:
    """Everything /api/status reports, aggregated over the live runproxy processes."""
    processes = proxy_processes_live(now=now)
    totals = proxy_totals(processes=processes)
    pools = pool_selectors.pools_with_backends()
    enabled_pool_ids = [p.id for p in pools if p.enabled]
    listeners = _listeners(processes)
    served = {entry["pool"] for entry in listeners if entry["accepting"]}
    rows = health_selectors.backend_health_all()
    backends = [
        {"id": b.id, "pool": pool.id, "health_mode": b.health_mode, "enabled": b.enabled, "draining": b.draining}
        | backend_health_view(backend=b, row=rows.get(b.id), now=now, timeout_seconds=_timeout(totals))
        for pool in pools
        for b in sorted(pool.backends.all(), key=lambda b: b.id)
    ]
    return {
        "generated_utc": now,
        "version": VERSION,
        "tiers": [{"id": tier, "label": TIER_LABELS[tier]} for tier in TIERS],
        "processes": [_process_view(p) for p in processes],
        "listeners": listeners,
        "pools_without_listener": [pool_id for pool_id in enabled_pool_ids if pool_id not in served],
        "counters": _counters_view(totals),
        "cache_size": totals.cache_size,
        "database": {"ok": not totals.db_errors, "errors": totals.db_errors,
                     "pending_bindings": totals.pending_bindings},
        "heartbeat": heartbeat_state(now=now, totals=totals, pool_ids=enabled_pool_ids),
        "backends": backends,
        "rates": rate_series(processes=processes, now=now),
        "calling_aes": calling_aes_summary(),
    }


def routing_decisions_recent(
    *, pool_id: str = "", backend_id: str = "", reason: str = ""
) -> QuerySet[RoutingDecision]:
    """First-instance routing decisions, newest first."""
    qs = filtered(RoutingDecision.objects.all(), pool_id=pool_id, backend_id=backend_id, reason=reason)
    return qs.order_by("-at_utc", "-id")


def failed_operations_recent(*, pool_id: str = "", backend_id: str = "") -> QuerySet[FailedOperation]:
    """Operations answered with a failure status, newest first (routing.telemetry keeps the last few hundred)."""
    return filtered(FailedOperation.objects.all(), pool_id=pool_id, backend_id=backend_id).order_by("-at_utc", "-id")


def failure_view(failure: FailedOperation) -> dict[str, Any]:
    """A failed operation with its status spelled out: the code, what it means, who answered it and why."""
    code = failure.status
    cause = SYNTHIQ_STATUS_CAUSES.get(code, "") if failure.origin == FailedOperation.Origin.SYNTHIQ else ""
    return {
        "id": failure.id, "at_utc": failure.at_utc, "pool": failure.pool_id, "service": failure.service,
        "calling_ae": failure.calling_ae, "source_ip": failure.source_ip, "study_uid": failure.study_uid,
        "sop_instance_uid": failure.sop_instance_uid, "backend": failure.backend_id,
        "status": code, "status_hex": f"0x{code:04X}", "meaning": store_status_meaning(code),
        "origin": failure.origin, "cause": cause, "comment": failure.comment,
    }


def rejected_associations_recent(*, pool_id: str = "") -> QuerySet[RejectedAssociation]:
    """Who was turned away, from where and why, most recently seen first."""
    return filtered(RejectedAssociation.objects.all(), pool_id=pool_id).order_by("-last_seen_utc", "-id")


def rejection_view(row: RejectedAssociation) -> dict[str, Any]:
    return {
        "pool": row.pool_id, "reason": row.reason, "reason_label": REJECTION_LABELS.get(row.reason, row.reason),
        "rejected": row.reason != CONTEXTS_REFUSED,
        "calling_ae": row.calling_ae, "called_ae": row.called_ae, "source_ip": row.source_ip, "detail": row.detail,
        "count": row.count, "first_seen_utc": row.first_seen_utc, "last_seen_utc": row.last_seen_utc,
    }
