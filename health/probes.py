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
import reprlib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import IO, Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match

from health.contract import certified_validator, native_validator
from pools.config import HealthConfig
from routing.dicom import negotiation, scu, sop_classes
from routing.dicom.netopts import ClientTls

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
    health: HealthConfig
    tls: ClientTls | None = None


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


class _RedirectRefused(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects with the request's headers, Authorization included: a
    backend (or whoever answers for it) could send the Basic credentials to any host, or
    from https:// down to http://. A redirect is answered as the error it is."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Message, newurl: str) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


# build_opener leaves out the default handler a subclass replaces; proxies and HTTPS as urlopen's.
_OPENER = urllib.request.build_opener(_RedirectRefused)


def http_get(*, url: str, timeout: float, health: HealthConfig | None = None) -> tuple[int, bytes]:
    """GET with a total deadline and a body cap, redirects not followed. Returns
    (status, body) for 2xx only."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if health and health.username:
        if url.startswith("http://") and not health.allow_plain_http_credentials:
            # The config file is checked for this; a Health section stored by an older
            # version is not, and its credentials must not go out in clear either.
            raise ProbeError(f"credentials for {url} not sent over plain http://; use https:// or set "
                             "Health.AllowPlainHttpCredentials to true")
        token = base64.b64encode(f"{health.username}:{health.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    deadline = time.monotonic() + timeout
    try:
        # urllib's timeout bounds each socket operation, not the whole exchange; the
        # deadline below bounds a peer that drips its body one byte at a time.
        with _OPENER.open(request, timeout=timeout) as response:
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
        if 300 <= exc.code < 400:
            location = exc.headers.get("Location")
            where = f"redirect to {location[:200]!r} not followed" if location else "redirect not followed"
            raise ProbeError(f"HTTP {exc.code} from {url}: {where}") from None
        raise ProbeError(f"HTTP {exc.code} from {url}", refused=exc.code == 503) from None
    except urllib.error.URLError as exc:
        raise ProbeError(f"cannot reach {url}: {exc.reason}") from None
    except TimeoutError:
        raise ProbeError(f"timed out after {timeout:.1f}s waiting for {url}") from None
    except (OSError, ValueError) as exc:  # connection reset, bad status line, bad URL
        raise ProbeError(f"HTTP exchange with {url} failed: {exc}") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"{text[:40]} is out of range for a number")
    return value


def json_object(body: bytes) -> dict[str, Any]:
    try:
        # Python's json accepts NaN and Infinity by default (and reads 1e400 as inf); a load
        # of NaN must not reach the ranking, where every comparison with it is False.
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProbeError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProbeError(f"body is not a JSON object but {type(data).__name__}")
    return data


# -- the native and certified contracts --------------------------------------------


def _schema_error_line(error: ValidationError) -> str:
    """What the schema rejects, in one line that names the field by its path."""
    path = [str(part) for part in error.absolute_path]
    if error.validator == "required":
        missing = next(name for name in error.validator_value if name not in error.instance)
        return f"{'.'.join([*path, missing])} missing"
    if error.validator == "anyOf" and all(branch.keys() == {"required"} for branch in error.validator_value):
        names = [name for branch in error.validator_value for name in branch["required"]]
        return f"neither {' nor '.join(names)} given"
    # jsonschema quotes the whole offending value; a 60 KiB string must not become the log line.
    message = error.message.replace(repr(error.instance), reprlib.repr(error.instance))
    return f"{'.'.join(path) or 'body'}: {message}"


def _contract_check(body: dict[str, Any], validator: Draft202012Validator) -> None:
    # A backend that says it is not ok is authoritative whatever the rest of its body holds.
    status = body.get("status")
    if isinstance(status, str) and status != "ok":
        raise ProbeError(f"backend reports status {status[:40]!r}", refused=True)
    error = best_match(validator.iter_errors(body))
    if error is not None:
        raise ProbeError(f"contract broken: {_schema_error_line(error)}")


def _integer(body: dict[str, Any], key: str) -> int | None:
    # The schemas' "integer" admits 5.0, as JSON Schema does; the Reading holds ints.
    return int(body[key]) if key in body else None


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
    _contract_check(body, native_validator)
    queue = {key: int(body["queue"][key]) for key in ("received", "hold", "processing", "failed")}
    depth = queue["received"] + queue["hold"] + queue["processing"]
    denominator = _integer(body, "capacity") or _integer(body, "max_associations")
    given = float(body["load"]) if "load" in body else None
    load, note = load_normalize(load=given, depth=depth, denominator=denominator)
    detail = {"queue": queue} | {
        key: int(body[key]) for key in ("active_associations", "disk_free_bytes", "throughput_per_min") if key in body
    }
    return Reading(load=load, queue_depth=depth, capacity=denominator, detail=detail, load_note=note)


def contract_certified(body: dict[str, Any]) -> Reading:
    """The minimal public contract: status, queue_depth or load, capacity or max_associations."""
    _contract_check(body, certified_validator)
    depth = _integer(body, "queue_depth")
    denominator = _integer(body, "capacity") or _integer(body, "max_associations")
    given = float(body["load"]) if "load" in body else None
    load, note = load_normalize(load=given, depth=depth, denominator=denominator)
    return Reading(load=load, queue_depth=depth, capacity=denominator, load_note=note)


def probe_native(target: Target, timeout: float) -> Reading:
    _, body = http_get(url=health_url(target), timeout=timeout, health=target.health)
    return contract_native(json_object(body))


def probe_certified(target: Target, timeout: float) -> Reading:
    _, body = http_get(url=health_url(target), timeout=timeout, health=target.health)
    return contract_certified(json_object(body))


def health_url(target: Target) -> str:
    if not target.health.url:  # the config model requires one for every mode that uses it
        raise ProbeError(f"no health Url configured for {target.backend_id}")
    return target.health.url


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
    """The adapter named in the backend's health (the shipped ones register when the health
    app loads: health.apps)."""
    name = target.health.adapter or ""
    adapter = ADAPTERS.get(name)
    if adapter is None:
        raise ProbeError(f"no health adapter named {name!r} (known: {', '.join(sorted(ADAPTERS))})")
    return adapter(target, timeout)


# -- liveness -----------------------------------------------------------------------


def probe_echo(target: Target, timeout: float) -> Reading:
    peer = scu.Peer(target.backend_id, target.ae_title, target.host, target.port, target.tls)
    try:
        with scu.associate(peer, calling_ae=target.pool_ae_title, timeout=timeout,
                           contexts=[(sop_classes.VERIFICATION, negotiation.VERIFICATION_SYNTAXES)]) as link:
            status = scu.echo(link)
    except scu.Unreachable as exc:
        raise ProbeError(f"C-ECHO association to {target.ae_title}@{target.host}:{target.port} "
                         f"{_why_not_established(exc, timeout)}") from None
    if status != 0x0000:
        raise ProbeError(f"C-ECHO returned status 0x{status:04X}")
    return Reading()


def _why_not_established(exc: scu.Unreachable, timeout: float) -> str:
    """Why the C-ECHO could not be had, in the words the heartbeat log and the backend's
    last error use: a rejection, a refused connection, silence, or a peer that dropped or
    aborted the association (or broke the protocol)."""
    cause = exc.cause
    if exc.rejected:
        return "rejected"
    if isinstance(cause, ConnectionRefusedError):
        return "refused: nothing listens on that port"
    if isinstance(cause, TimeoutError):
        return f"timed out: no answer within {timeout:.1f}s"
    if isinstance(cause, ConnectionError):
        return f"aborted: {cause}"
    return f"not established: {cause or exc}"


def probe_tcp(target: Target, timeout: float) -> Reading:
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass
    except OSError as exc:
        raise ProbeError(f"TCP connect to {target.host}:{target.port} failed: {exc}") from None
    return Reading()


def probe_http(target: Target, timeout: float) -> Reading:
    status, _ = http_get(url=health_url(target), timeout=timeout, health=target.health)
    return Reading(detail={"http_status": status})


LIVENESS = {"echo": probe_echo, "tcp": probe_tcp, "http": probe_http}


def probe_run(*, target: Target, timeout: float) -> Reading:
    """Run the backend's probe. Raises ProbeError for every kind of failed heartbeat."""
    mode = target.health.mode
    try:
        if mode == "native":
            return probe_native(target, timeout)
        if mode == "certified":
            return probe_certified(target, timeout)
        if mode == "adapter":
            return probe_adapter(target, timeout)
        if mode == "liveness":
            reading = LIVENESS[target.health.probe](target, timeout)
            # Up/down only: whatever a liveness check saw, the load stays unknown.
            return Reading(detail=reading.detail)
        raise ProbeError(f"unknown health mode {mode!r}")
    except ProbeError:
        raise
    except Exception as exc:  # a probe bug must fail one heartbeat, not the round
        raise ProbeError(f"probe crashed: {type(exc).__name__}: {exc}") from exc
