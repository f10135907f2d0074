"""Health probes: one function per mode, from a backend's health config to a Reading.

Probes do I/O only (HTTP, TCP, DICOM C-ECHO), never the ORM, so a round can run them
on a thread pool and write the results from one thread. Every way a probe can go
wrong (refused, timeout, HTTP error, oversized or malformed body, wrong types) ends in
a ``ProbeError`` with a message fit for a log line; nothing else escapes.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from routing.dicom.netopts import client_tls, tune_pynetdicom

# A health body is a few hundred bytes; anything past this is a broken or hostile peer,
# and reading it whole would let one backend eat the heartbeat runner's memory.
MAX_BODY_BYTES = 64 * 1024


class ProbeError(Exception):
    """A failed heartbeat. ``refused`` marks an authoritative "not ok" from the backend
    itself (as opposed to silence or garbage, which may be transient)."""

    def __init__(self, message: str, *, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Target:
    """What a probe needs to know about a backend (a plain copy: no ORM in probes)."""

    backend_id: str
    pool_ae_title: str
    ae_title: str
    host: str
    port: int
    health: dict[str, Any]
    tls: dict | None = None


@dataclass(frozen=True)
class Reading:
    """A good heartbeat. ``load`` None means unknown (liveness, or no denominator)."""

    load: float | None = None
    queue_depth: int | None = None
    capacity: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # Why the load is unknown although the backend reports a depth (logged by the caller).
    load_note: str = ""


# -- HTTP -------------------------------------------------------------------------


def http_get(*, url: str, timeout: float, health: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """GET with a total deadline and a body cap. Returns (status, body) for 2xx only."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if health and health.get("Username"):
        token = base64.b64encode(f"{health['Username']}:{health.get('Password', '')}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    deadline = time.monotonic() + timeout
    try:
        # urllib's timeout bounds each socket operation, not the whole exchange; the
        # deadline below bounds a peer that drips its body one byte at a time.
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise ProbeError(f"body of {declared} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise ProbeError(f"timed out after {timeout:.1f}s reading the body")
                chunk = response.read1(8192)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ProbeError(f"body exceeds the {MAX_BODY_BYTES}-byte limit")
                chunks.append(chunk)
            return response.status, b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise ProbeError(f"HTTP {exc.code} from {url}", refused=exc.code == 503) from None
    except urllib.error.URLError as exc:
        raise ProbeError(f"cannot reach {url}: {exc.reason}") from None
    except TimeoutError:
        raise ProbeError(f"timed out after {timeout:.1f}s waiting for {url}") from None
    except (OSError, ValueError) as exc:  # connection reset, bad status line, bad URL
        raise ProbeError(f"HTTP exchange with {url} failed: {exc}") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def json_object(body: bytes) -> dict[str, Any]:
    try:
        # Python's json accepts NaN and Infinity by default; a load of NaN must not reach
        # the ranking, where every comparison with it is False.
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProbeError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProbeError(f"body is not a JSON object but {type(data).__name__}")
    return data


# -- the native and certified contracts --------------------------------------------


def _count(body: dict[str, Any], key: str, *, where: str = "", required: bool = True, positive: bool = False):
    """A non-negative (or positive) integer field; bool is not a number here."""
    name = f"{where}{key}"
    if key not in body or body[key] is None:
        if required:
            raise ProbeError(f"contract broken: {name} missing")
        return None
    value = body[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's "integer" admits 5.0; so does the published contract
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProbeError(f"contract broken: {name} must be an integer, got {json.dumps(value)[:40]}")
    if value < (1 if positive else 0):
        raise ProbeError(f"contract broken: {name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _load(body: dict[str, Any]) -> float | None:
    value = body.get("load")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ProbeError(f"contract broken: load must be a number >= 0, got {json.dumps(value)[:40]}")
    return float(value)


def _status_ok(body: dict[str, Any]) -> None:
    status = body.get("status")
    if not isinstance(status, str):
        raise ProbeError("contract broken: status missing or not a string")
    if status != "ok":
        raise ProbeError(f"backend reports status {status[:40]!r}", refused=True)


def load_normalize(*, load: float | None, depth: int | None, denominator: int | None) -> tuple[float | None, str]:
    """The common load scale: the backend's own ``load`` when given, else depth over
    capacity. A depth without a denominator is unknown, never guessed: a node of
    capacity 5 and one of 500 reporting the same depth are not equally busy."""
    if load is not None:
        return load, ""
    if depth is not None and denominator:
        return depth / denominator, ""
    return None, "depth reported without capacity or max_associations: load unknown"


def contract_native(body: dict[str, Any]) -> Reading:
    """The full contract (GET /api/health). Depth = received + hold + processing;
    failed items are excluded (a node with many failures is unhealthy, not busy)."""
    _status_ok(body)
    queue = body.get("queue")
    if not isinstance(queue, dict):
        raise ProbeError("contract broken: queue missing or not an object")
    parts = {k: _count(queue, k, where="queue.") for k in ("received", "hold", "processing", "failed")}
    depth = parts["received"] + parts["hold"] + parts["processing"]
    capacity = _count(body, "capacity", required=False, positive=True)
    max_associations = _count(body, "max_associations", required=False, positive=True)
    extras = {k: _count(body, k, required=False)
              for k in ("active_associations", "disk_free_bytes", "throughput_per_min")}
    denominator = capacity or max_associations
    load, note = load_normalize(load=_load(body), depth=depth, denominator=denominator)
    detail = {"queue": parts} | {k: v for k, v in extras.items() if v is not None}
    return Reading(load=load, queue_depth=depth, capacity=denominator, detail=detail, load_note=note)


def contract_certified(body: dict[str, Any]) -> Reading:
    """The minimal public contract: status, queue_depth or load, capacity or max_associations."""
    _status_ok(body)
    depth = _count(body, "queue_depth", required=False)
    given = _load(body)
    if depth is None and given is None:
        raise ProbeError("contract broken: neither queue_depth nor load given")
    capacity = _count(body, "capacity", required=False, positive=True)
    max_associations = _count(body, "max_associations", required=False, positive=True)
    denominator = capacity or max_associations
    load, note = load_normalize(load=given, depth=depth, denominator=denominator)
    return Reading(load=load, queue_depth=depth, capacity=denominator, load_note=note)


def probe_native(target: Target, timeout: float) -> Reading:
    _, body = http_get(url=target.health["Url"], timeout=timeout, health=target.health)
    return contract_native(json_object(body))


def probe_certified(target: Target, timeout: float) -> Reading:
    _, body = http_get(url=target.health["Url"], timeout=timeout, health=target.health)
    return contract_certified(json_object(body))


# -- adapters -----------------------------------------------------------------------

Adapter = Callable[[Target, float], Reading]
ADAPTERS: dict[str, Adapter] = {}


def adapter_register(name: str) -> Callable[[Adapter], Adapter]:
    """Register a normalizer from a vendor's own metrics to the common load scale."""

    def register(fn: Adapter) -> Adapter:
        ADAPTERS[name] = fn
        return fn

    return register


def probe_adapter(target: Target, timeout: float) -> Reading:
    import health.adapters  # noqa: F401  (registers the shipped adapters)

    name = target.health.get("Adapter", "")
    adapter = ADAPTERS.get(name)
    if adapter is None:
        raise ProbeError(f"no health adapter named {name!r} (known: {', '.join(sorted(ADAPTERS))})")
    return adapter(target, timeout)


# -- liveness -----------------------------------------------------------------------


def probe_echo(target: Target, timeout: float) -> Reading:
    ae = AE(ae_title=target.pool_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    tls_args = (client_tls(target.tls), target.host) if target.tls else None
    try:
        assoc = ae.associate(target.host, target.port, ae_title=target.ae_title, tls_args=tls_args,
                             evt_handlers=[(evt.EVT_CONN_OPEN, tune_pynetdicom)])
    except (OSError, ValueError) as exc:
        raise ProbeError(f"C-ECHO association failed: {exc}") from None
    if not assoc.is_established:
        # pynetdicom reports a refused or dropped connection as an abort, not an exception.
        what = "rejected" if assoc.is_rejected else "not established (connection refused or aborted)"
        raise ProbeError(f"C-ECHO association to {target.ae_title}@{target.host}:{target.port} {what}")
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    status = int(rsp.Status) if "Status" in rsp else None
    if status != 0x0000:
        raise ProbeError(f"C-ECHO returned status {'none' if status is None else f'0x{status:04X}'}")
    return Reading()


def probe_tcp(target: Target, timeout: float) -> Reading:
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass
    except OSError as exc:
        raise ProbeError(f"TCP connect to {target.host}:{target.port} failed: {exc}") from None
    return Reading()


def probe_http(target: Target, timeout: float) -> Reading:
    status, _ = http_get(url=target.health["Url"], timeout=timeout, health=target.health)
    return Reading(detail={"http_status": status})


LIVENESS = {"echo": probe_echo, "tcp": probe_tcp, "http": probe_http}


def probe_run(*, target: Target, timeout: float) -> Reading:
    """Run the backend's probe. Raises ProbeError for every kind of failed heartbeat."""
    mode = target.health.get("Mode", "liveness")
    try:
        if mode == "native":
            return probe_native(target, timeout)
        if mode == "certified":
            return probe_certified(target, timeout)
        if mode == "adapter":
            return probe_adapter(target, timeout)
        if mode == "liveness":
            reading = LIVENESS[target.health.get("Probe", "echo")](target, timeout)
            # Up/down only: whatever a liveness check saw, the load stays unknown.
            return Reading(detail=reading.detail)
        raise ProbeError(f"unknown health mode {mode!r}")
    except ProbeError:
        raise
    except Exception as exc:  # a probe bug must fail one heartbeat, not the round
        raise ProbeError(f"probe crashed: {type(exc).__name__}: {exc}") from exc
