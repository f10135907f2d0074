"""The simulated backend (``manage.py runbackend``): a PACS node for the demo, the tests and
the benchmarks.

A Storage SCP that stores what it receives to a folder (or discards it), and an HTTP
side serving the native /api/health contract, what it holds (per study: SOP instance
UIDs and a SHA-256 of each data set's bytes) and runtime knobs (latency, queue depth,
forced status, abort, health answer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from routing.dicom.netopts import tune_pynetdicom
from routing.dicom.scan import HeaderError, scan_header
from routing.dicom.status import SUCCESS, is_success
from routing.simulators import SimulatorError

T = TypeVar("T")

logger = logging.getLogger("synthiq.backend")


class SimulatedBackend:
    """What one simulated node holds and how it answers, driven by ``knobs``."""

    def __init__(self, *, store_dir: Path | None, knobs: dict[str, Any]):
        self.ae: AE | None = None  # set by serve(): the "reject" knob reconfigures it
        self.store_dir = store_dir
        self.knobs = knobs
        self.lock = threading.Lock()
        self.holdings: dict[str, dict[str, str]] = {}
        self.processing = 0
        self.received_total = 0
        self.recent: deque[float] = deque(maxlen=100_000)
        self.associations = {"released": 0, "aborted": 0}
        # The command attributes of the last requests, so tests can see what was carried over.
        self.requests: deque[dict[str, Any]] = deque(maxlen=1000)

    def count_association(self, event: evt.Event, outcome: str) -> None:
        with self.lock:
            self.associations[outcome] += 1

    def handle_store(self, event: evt.Event) -> Dataset | int:
        with self.lock:
            self.processing += 1
        try:
            return self._store(event)
        finally:
            with self.lock:
                self.processing -= 1

    def _store(self, event: evt.Event) -> Dataset | int:
        knobs = self.knobs
        if knobs.get("latency_ms"):
            time.sleep(knobs["latency_ms"] / 1000)
        if knobs.get("abort"):
            event.assoc.abort()
            return 0xA700  # Refused: Out of Resources (the association is gone; nobody reads it)
        path = event.dataset_path
        _, offset = split_dataset(path)
        digest = hashlib.sha256()
        with open(path, "rb") as fp:
            fp.seek(offset)
            try:
                suid = scan_header(fp=fp, transfer_syntax=event.context.transfer_syntax).study_uid
            except HeaderError:
                suid = "(unreadable)"
            fp.seek(offset)
            while chunk := fp.read(1 << 20):
                digest.update(chunk)
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID)
        with self.lock:
            self.requests.append({
                "sop_instance_uid": sop_uid, "message_id": req.MessageID, "priority": req.Priority,
                "move_originator_ae": req.MoveOriginatorApplicationEntityTitle,
                "move_originator_id": req.MoveOriginatorMessageID, "calling_ae": event.assoc.requestor.ae_title,
            })
        status = int(knobs.get("status", SUCCESS))
        if is_success(status):  # a forced warning still means stored
            if self.store_dir is not None:
                target = self.store_dir / suid / f"{sop_uid}.dcm"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            with self.lock:
                self.holdings.setdefault(suid, {})[sop_uid] = digest.hexdigest()
                self.received_total += 1
                self.recent.append(time.monotonic())
        if status == SUCCESS and not knobs.get("error_comment"):
            return SUCCESS
        rsp = Dataset()
        rsp.Status = status
        if knobs.get("error_comment"):
            rsp.ErrorComment = knobs["error_comment"]
        return rsp

    def health(self) -> dict[str, Any]:
        with self.lock:
            now = time.monotonic()
            per_min = sum(1 for t in self.recent if now - t <= 60)
            depth = int(self.knobs.get("queue_depth", 0))
            return {
                "status": "ok",
                "queue": {"received": depth, "hold": 0, "processing": self.processing, "failed": 0},
                "capacity": int(self.knobs.get("capacity", 50)),
                "active_associations": self.processing,
                "disk_free_bytes": shutil.disk_usage(self.store_dir or Path(".")).free,
                "throughput_per_min": per_min,
            }


def _listen(ae_title: str, what: str, host: str, port: int, start: Callable[[], T]) -> T:
    try:
        return start()
    except OSError as exc:
        raise SimulatorError(f"{ae_title}: cannot listen on {host}:{port} ({what}): {exc.strerror or exc}") from None


def handle_echo(event: evt.Event) -> int:
    return SUCCESS  # C-ECHO: Success


def http_handler(backend: SimulatedBackend) -> type[BaseHTTPRequestHandler]:
    """The HTTP side: /api/health, what the node holds and saw, and the knobs."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: tests poll this
            pass

        def _json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/api/health":
                mode = backend.knobs.get("health", "ok")
                if mode == "hang":
                    time.sleep(backend.knobs.get("hang_seconds", 30))
                if mode == "down":
                    return self._json(503, {"status": "down"})
                if mode == "garbage":
                    return self._json(200, {"status": "ok", "queue": "lots"})
                return self._json(200, backend.health())
            if self.path == "/api/requests":
                with backend.lock:
                    return self._json(200, list(backend.requests))
            if self.path == "/api/associations":
                with backend.lock:
                    return self._json(200, dict(backend.associations))
            if self.path == "/api/holdings":
                with backend.lock:
                    return self._json(200, json.loads(json.dumps(backend.holdings)))
            return self._json(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/api/control":
                return self._json(404, {"error": "not found"})
            length = int(self.headers.get("Content-Length", 0))
            try:
                update = json.loads(self.rfile.read(length) or b"{}")
                if isinstance(update.get("status"), str):
                    update["status"] = int(update["status"], 16)
            except (ValueError, AttributeError) as exc:
                return self._json(400, {"error": str(exc)})
            backend.knobs.update(update)
            if "reject" in update and backend.ae is not None:
                # Refuse every association (A-ASSOCIATE-RJ, calling AE not recognised) while set.
                backend.ae.require_calling_aet = ["NOBODY-AT-ALL"] if update["reject"] else []
            return self._json(200, backend.knobs)

        def do_DELETE(self):
            if self.path != "/api/holdings":
                return self._json(404, {"error": "not found"})
            with backend.lock:
                backend.holdings.clear()
            return self._json(200, {})

    return Handler


def serve(
    *,
    ae_title: str,
    host: str,
    port: int,
    http_port: int,
    store_dir: Path | None,
    knobs: dict[str, Any],
    announce: Callable[[str], None],
    max_pdu: int = 262144,
) -> None:
    """Run a simulated backend until SIGTERM or SIGINT; ``announce`` gets the ready line."""
    _config.UNRESTRICTED_STORAGE_SERVICE = True  # take any storage SOP class, private ones too
    _config.STORE_RECV_CHUNKED_DATASET = True  # data sets go to a file, never whole into memory
    _config.LOG_HANDLER_LEVEL = "none"
    if store_dir is not None:
        store_dir.mkdir(parents=True, exist_ok=True)  # /api/health reports its free space
    backend = SimulatedBackend(store_dir=store_dir, knobs=knobs)
    ae = AE(ae_title=ae_title)
    backend.ae = ae
    ae.maximum_associations = 64
    ae.maximum_pdu_size = max_pdu  # 0: "no limit", as some PACS announce
    ae.dimse_timeout = ae.network_timeout = 600
    ae.add_supported_context(Verification)
    handlers = [
        (evt.EVT_CONN_OPEN, tune_pynetdicom),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, backend.handle_store),
        (evt.EVT_RELEASED, backend.count_association, ["released"]),
        (evt.EVT_ABORTED, backend.count_association, ["aborted"]),
    ]
    # The health endpoint first: once the DICOM port answers, both do.
    http = _listen(ae_title, "HTTP", host, http_port,
                   lambda: ThreadingHTTPServer((host, http_port), http_handler(backend)))
    server = _listen(ae_title, "DICOM", host, port,
                     lambda: ae.start_server((host, port), block=False, evt_handlers=handlers))
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, name="backend-http", daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    announce(f"runbackend ready: {ae_title}@{host}:{port} http:{http_port}")
    stop.wait()
    server.shutdown()
    http.shutdown()
