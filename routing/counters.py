"""What a runproxy process publishes about itself, defined once: the counter names that
``routing.telemetry`` writes and the operator views (``routing.operator``: the status API,
the dashboard, ``/metrics``) and the admin read, and the shape of the published snapshot.

Counters are a flat mapping of name to number, so that several processes' counters add up
name by name (``routing.operator.selectors.proxy_totals``):

- ``routed.<tier>``: C-STOREs by routing tier (``routing.waterfall.TIERS``);
- ``status.<class>``: C-STORE outcomes by status class (``routing.dicom.status.status_class``);
- ``service.<service>.<class>``: the other services' operations (C-FIND, ..., DICOMweb's);
- ``invalid.<service>.<what>``: requests refused for an identifier that is not a valid UID;
- ``rejected.<reason>``: associations refused (A-ASSOCIATE-RJ), by reason;
- plain names: received, failed, bytes, decisions, associations, held, ...

A snapshot read back comes from the database: every reader tolerates missing keys (a process
of an older version publishes fewer) and values of the wrong type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

# The status classes that are not failures: a "failed" count is everything else.
OK_STATUS_CLASSES = ("success", "warning")

_ROUTED = "routed."
_STATUS = "status."
_SERVICE = "service."
_INVALID = "invalid."
_REJECTED = "rejected."


def routed(tier: str) -> str:
    return f"{_ROUTED}{tier}"


def stored(status_class: str) -> str:
    """A C-STORE outcome (also kept per backend)."""
    return f"{_STATUS}{status_class}"


def operation(service: str, status_class: str) -> str:
    return f"{_SERVICE}{service}.{status_class}"


def invalid(service: str, what: str) -> str:
    return f"{_INVALID}{service}.{what}"


def rejected(reason: str) -> str:
    return f"{_REJECTED}{reason}"


def is_failure(status_class: str) -> bool:
    return status_class not in OK_STATUS_CLASSES


def failed(by_class: Mapping[str, int]) -> int:
    """How many of these outcomes (status class -> count) were failures."""
    return sum(n for cls, n in by_class.items() if is_failure(cls))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


class Counts:
    """Reading a published counter mapping (a process's, a backend's or several added up)."""

    def __init__(self, counters: Mapping[str, Any] | None):
        self._counters = counters or {}

    def __getitem__(self, name: str) -> int:
        return _int(self._counters.get(name, 0))

    def _prefixed(self, prefix: str) -> dict[str, int]:
        return {k.removeprefix(prefix): _int(v) for k, v in sorted(self._counters.items()) if k.startswith(prefix)}

    def routed(self, tiers: tuple[str, ...]) -> dict[str, int]:
        return {tier: self[routed(tier)] for tier in tiers}

    def statuses(self) -> dict[str, int]:
        """C-STORE outcomes by status class."""
        return self._prefixed(_STATUS)

    def failed(self) -> int:
        return failed(self.statuses())

    def operations(self) -> dict[str, dict[str, int]]:
        """The other services' operations by service and final status class."""
        out: dict[str, dict[str, int]] = {}
        for key, value in self._prefixed(_SERVICE).items():
            service, _, cls = key.rpartition(".")
            out.setdefault(service, {})[cls] = value
        return out

    def invalid(self) -> dict[tuple[str, str], int]:
        """Requests refused for an invalid identifier, by (service, what was invalid)."""
        out: dict[tuple[str, str], int] = {}
        for key, value in self._prefixed(_INVALID).items():
            service, _, what = key.partition(".")
            out[(service, what)] = value
        return out

    def rejected(self) -> dict[str, int]:
        """Associations rejected by reason: called-ae, calling-ae, association-limit, ..."""
        return self._prefixed(_REJECTED)


class Snapshot(TypedDict, total=False):
    """What one runproxy process publishes (``ProxyProcess.counters``): its telemetry
    (``Telemetry.snapshot``) and the supervisor's state (``routing.worker.Worker``)."""

    # routing.telemetry.Telemetry
    counters: dict[str, int]
    backends: dict[str, dict[str, float]]  # backend id -> forwarded, bytes, forward_seconds, status.<class>, ...
    open_associations: int
    latency_buckets: list[float]
    latency: dict[str, list[int]]  # backend id -> counts per bucket (one more for +Inf)
    recent: list[dict[str, Any]]
    rates: dict[str, Any]
    # routing.worker.Worker
    cache_size: int
    db_ok: bool
    db_error: str | None
    pending_bindings: int
    pending_connections: int
    held_associations: int
    tasks: int
    services: dict[str, dict[str, dict[str, Any]]]  # pool id -> service -> routing.telemetry.services_view
    audit: dict[str, int]
    heartbeat_interval: float
    heartbeat_timeout: float
    heartbeat_mode: str
    heartbeat_stale: bool | None  # None: the heartbeat rows could not be read (heartbeat_error)
    heartbeat_error: str
    heartbeat_stale_pools: list[str]


def snapshot_of(published: Any) -> Snapshot:
    """A published snapshot as read back from the database (anything but a mapping: empty)."""
    return published if isinstance(published, dict) else Snapshot()  # type: ignore[return-value]
