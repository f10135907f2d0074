"""runbackend: a simulated PACS node for the demo, the tests and the benchmarks.

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from routing.dicom.netopts import tune_pynetdicom
from routing.dicom.scan import HeaderError, scan_header

logger = logging.getLogger("synthiq.backend")

_config.UNRESTRICTED_STORAGE_SERVICE = True
_config.STORE_RECV_CHUNKED_DATASET = True
_config.LOG_HANDLER_LEVEL = "none"


class Backend:
    def __init__(self, *, store_dir: Path | None, knobs: dict[str, Any]):
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
            return 0xA700
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
        status = int(knobs.get("status", 0))
        if status in (0x0000, 0xB000, 0xB006, 0xB007):
            if self.store_dir is not None:
                target = self.store_dir / suid / f"{sop_uid}.dcm"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            with self.lock:
                self.holdings.setdefault(suid, {})[sop_uid] = digest.hexdigest()
                self.received_total += 1
                self.recent.append(time.monotonic())
        if status == 0 and not knobs.get("error_comment"):
            return 0x0000  # Success
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


def _http_handler(backend: Backend):
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
            return self._json(200, backend.knobs)

        def do_DELETE(self):
            if self.path != "/api/holdings":
                return self._json(404, {"error": "not found"})
            with backend.lock:
                backend.holdings.clear()
            return self._json(200, {})

    return Handler


class Command(BaseCommand):
    help = "Run a simulated backend: Storage SCP plus the native /api/health contract."

    def add_arguments(self, parser):
        parser.add_argument("--ae-title", default="BACKEND")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--http-port", type=int, required=True)
        parser.add_argument("--store-dir", help="store received files here (default: discard)")
        parser.add_argument("--latency-ms", type=float, default=0)
        parser.add_argument("--queue-depth", type=int, default=0)
        parser.add_argument("--capacity", type=int, default=50)
        parser.add_argument("--status", default="0x0000", help="forced C-STORE status, hex")
        parser.add_argument("--error-comment", default="")

    def handle(self, *args, **o):
        store_dir = Path(o["store_dir"]) if o["store_dir"] else None
        if store_dir is not None:
            store_dir.mkdir(parents=True, exist_ok=True)  # /api/health reports its free space
        knobs = {
            "latency_ms": o["latency_ms"], "queue_depth": o["queue_depth"], "capacity": o["capacity"],
            "status": int(o["status"], 16), "error_comment": o["error_comment"],
        }
        backend = Backend(store_dir=store_dir, knobs=knobs)
        ae = AE(ae_title=o["ae_title"])
        ae.maximum_associations = 64
        ae.maximum_pdu_size = 262144
        ae.dimse_timeout = ae.network_timeout = 600
        ae.add_supported_context(Verification)
        server = ae.start_server(
            (o["host"], o["port"]),
            block=False,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, tune_pynetdicom),
                (evt.EVT_C_ECHO, lambda event: 0x0000),
                (evt.EVT_C_STORE, backend.handle_store),
                (evt.EVT_RELEASED, backend.count_association, ["released"]),
                (evt.EVT_ABORTED, backend.count_association, ["aborted"]),
            ],
        )
        http = ThreadingHTTPServer((o["host"], o["http_port"]), _http_handler(backend))
        http.daemon_threads = True
        threading.Thread(target=http.serve_forever, daemon=True).start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        self.stdout.write(f"runbackend ready: {o['ae_title']}@{o['host']}:{o['port']} http:{o['http_port']}")
        self.stdout.flush()
        stop.wait()
        server.shutdown()
        http.shutdown()
