"""The simulated backend (``manage.py runbackend``): a PACS node for the demo, the tests and
the benchmarks.

A Storage SCP that stores what it receives to a folder (or discards it), and serves what a
PACS node serves from what it holds (``routing.simulators.index``, kept in memory, also in
discard mode; rebuilt at start from the files an earlier run stored):

- **C-FIND** (Study Root and Patient Root) at every level, with counts such as
  NumberOfStudyRelatedInstances. An optional result cap (``find_limit``) ends a query with
  more matches after that many Pending responses and a final 0xFE00, as Orthanc's
  ``LimitFindResults`` does.
- **C-MOVE** to the destinations it is told about (``--move-destination AE=host:port``;
  any other is answered 0xA801), and **C-GET** on the requester's association. Only kept
  bytes can be sent: in discard mode (no ``--store-dir``) a retrieve that matches anything
  fails with 0xA702 and an Error Comment saying so, every instance counted as failed.
- **Storage commitment** (push model): N-ACTION-RSP, then an N-EVENT-REPORT listing the
  instances it holds as committed and the others as failed (0x0112; 0x0119 for a SOP class
  other than the one stored) — on the requester's association while it is open, otherwise
  on a new association to the address it was told for that AE title
  (``--commitment-requester AE=host:port``), proposing the SCP role.

An HTTP side serves the native /api/health contract, what it holds (``GET /api/holdings``,
per study: SOP instance UIDs and a SHA-256 of each data set's bytes), the commitment
reports it sent (``GET /api/commitments``) and runtime knobs (``POST /api/control``:
latency, queue depth, forced status, abort, health answer, ``find_limit``,
``commitment_delay_ms``). ``POST /api/instances`` indexes instances it never received (a
node holding 100,000 studies for a benchmark, in a second); ``DELETE /api/instances/<SOP
Instance UID>`` loses one, as a node that loses data; ``DELETE /api/holdings`` forgets all.
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

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from routing.dicom import sop_classes, status, uids
from routing.dicom.netopts import tune_pynetdicom
from routing.dicom.status import SUCCESS, is_success
from routing.simulators import SimulatorError, find_answers
from routing.simulators.index import (
    INDEXED,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY,
    STUDY_UID,
    UID_TAGS,
    Index,
    Instance,
    Query,
    QueryError,
    read_header,
)

T = TypeVar("T")

logger = logging.getLogger("synthiq.backend")

COMMITMENT_INSTANCE = sop_classes.STORAGE_COMMITMENT_INSTANCE
PUSH = sop_classes.STORAGE_COMMITMENT_PUSH
REQUEST_STORAGE_COMMITMENT = 1  # N-ACTION Action Type ID
COMMITTED_ALL, COMMITTED_WITH_FAILURES = 1, 2  # N-EVENT-REPORT Event Type IDs
CLASS_INSTANCE_CONFLICT = 0x0119  # a Failure Reason: the SOP class is not the one stored
NO_SUCH_ACTION = 0x0123  # N-ACTION: No such action type
INVALID_OBJECT_INSTANCE = 0x0117  # N-ACTION: Invalid SOP instance
NOT_KEPT = "discard mode: no data sets kept (runbackend --store-dir)"
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
SEED_KEYWORDS = {keyword_for_tag(tag): tag for tag in INDEXED}  # POST /api/instances


def parse_address(text: str) -> tuple[str, tuple[str, int]]:
    """``AE=host:port`` (a move destination, a commitment requester); ValueError says why not."""
    ae, sep, address = text.partition("=")
    host, colon, port = address.rpartition(":")
    ae = ae.strip()
    if not sep or not colon or not host or not port.isdigit():
        raise ValueError(f"{text!r}: expected AE=host:port")
    if not 0 < len(ae) <= 16 or "\\" in ae or not ae.isprintable():
        raise ValueError(f"{text!r}: the AE title must be 1 to 16 printable characters")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port {port} is not 1-65535")
    return ae, (host.strip("[]"), int(port))


class SimulatedBackend:
    """What one simulated node holds and how it answers, driven by ``knobs``."""

    def __init__(self, *, store_dir: Path | None, knobs: dict[str, Any], ae_title: str = "BACKEND",
                 move_destinations: dict[str, tuple[str, int]] | None = None,
                 commitment_requesters: dict[str, tuple[str, int]] | None = None):
        self.ae: AE | None = None  # set by serve(): the "reject" knob reconfigures it
        self.ae_title = ae_title
        self.store_dir = store_dir
        self.knobs = knobs
        self.move_destinations = move_destinations or {}
        self.commitment_requesters = commitment_requesters or {}
        self.lock = threading.Lock()
        self.index = Index()
        # The storage commitment reports sent (or not), newest last, for the tests and operators.
        self.reports: deque[dict[str, Any]] = deque(maxlen=1000)
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
        transfer_syntax = str(event.context.transfer_syntax)
        with open(path, "rb") as fp:
            fp.seek(offset)
            values = read_header(fp, transfer_syntax)
            suid = values.get(STUDY_UID) or "(unreadable)"
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
        code = int(knobs.get("status", SUCCESS))
        if is_success(code):  # a forced warning still means stored
            target = None
            if self.store_dir is not None:
                target = self.store_dir / _file_name(suid) / f"{_file_name(sop_uid)}.dcm"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            if not uids.uid_problem(suid) and not uids.uid_problem(sop_uid):
                # The request's UIDs are what the node answers for (as a PACS indexes them).
                values |= {0x00080018: sop_uid, 0x00080016: str(req.AffectedSOPClassUID)}
                self.index.add(Instance.of(values, transfer_syntax, target))
            with self.lock:
                self.holdings.setdefault(suid, {})[sop_uid] = digest.hexdigest()
                self.received_total += 1
                self.recent.append(time.monotonic())
        if code == SUCCESS and not knobs.get("error_comment"):
            return SUCCESS
        rsp = Dataset()
        rsp.Status = code
        if knobs.get("error_comment"):
            rsp.ErrorComment = knobs["error_comment"]
        return rsp

    def reload(self) -> int:
        """Index what an earlier run stored under ``store_dir`` (a restarted node still holds
        its files); unreadable files are logged and left out. Returns how many were indexed."""
        if self.store_dir is None:
            return 0
        count = 0
        for path in sorted(self.store_dir.glob("*/*.dcm")):
            try:
                meta, offset = split_dataset(path)
                transfer_syntax = str(meta.TransferSyntaxUID)
                sop, sop_class = str(meta.MediaStorageSOPInstanceUID), str(meta.MediaStorageSOPClassUID)
                digest = hashlib.sha256()
                with open(path, "rb") as fp:
                    fp.seek(offset)
                    values = read_header(fp, transfer_syntax)
                    fp.seek(offset)
                    while chunk := fp.read(1 << 20):
                        digest.update(chunk)
            except Exception as exc:  # pydicom raises many types on a file that is not DICOM
                logger.warning("%s: %s left out of the index: %s", self.ae_title, path, exc)
                continue
            suid = values.get(STUDY_UID, "")
            if uids.uid_problem(suid) or uids.uid_problem(sop) or uids.uid_problem(sop_class):
                logger.warning("%s: %s left out of the index: no valid Study/SOP UIDs", self.ae_title, path)
                continue
            self.index.add(Instance.of(values | {SOP_INSTANCE_UID: sop, SOP_CLASS_UID: sop_class},
                                       transfer_syntax, path))
            with self.lock:
                self.holdings.setdefault(suid, {})[sop] = digest.hexdigest()
            count += 1
        return count

    def seed(self, rows: Any) -> int:
        """Index instances without receiving them (as discard mode would have): a list of
        objects keyed by DICOM keyword, StudyInstanceUID and SOPInstanceUID required. For
        benchmarks and tests that need a node holding many studies; ValueError names the
        first bad row, and nothing is added then."""
        if not isinstance(rows, list):
            raise ValueError("expected a JSON list of objects")
        instances = []
        for n, row in enumerate(rows):
            if not isinstance(row, dict) or not all(isinstance(v, str) for v in row.values()):
                raise ValueError(f"row {n}: expected an object of strings")
            values = {}
            for keyword, value in row.items():
                tag = SEED_KEYWORDS.get(keyword)
                if tag is None:
                    raise ValueError(f"row {n}: {keyword!r} is not one of {', '.join(SEED_KEYWORDS)}")
                if len(value) > 64 or (tag in UID_TAGS and value and uids.uid_problem(value)):
                    raise ValueError(f"row {n}: {keyword} {uids.shown(value)} is invalid")
                if value:
                    values[tag] = value
            if STUDY_UID not in values or SOP_INSTANCE_UID not in values:
                raise ValueError(f"row {n}: StudyInstanceUID and SOPInstanceUID are required")
            values.setdefault(SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture
            instances.append(Instance.of(values, ExplicitVRLittleEndian))
        for instance in instances:
            self.index.add(instance)
        with self.lock:
            for instance in instances:
                self.holdings.setdefault(instance.shared[STUDY_UID], {})[instance.sop_instance_uid] = ""
        # A node loaded in bulk has its study records made now, as a PACS indexes at ingest.
        self.index.warm(dict.fromkeys(instance.shared[STUDY_UID] for instance in instances))
        return len(instances)

    # -- query / retrieve --------------------------------------------------------------------
    def _query(self, event: evt.Event, *, retrieve: bool) -> Query:
        """The request's identifier, checked; QueryError says how to answer otherwise."""
        try:
            identifier = event.identifier
        except Exception as exc:  # pydicom raises many types on bytes that are not DICOM
            raise QueryError(status.CANNOT_UNDERSTAND, f"identifier unreadable: {exc}") from None
        return Query.parse(identifier, str(event.request.AffectedSOPClassUID), retrieve=retrieve)

    def handle_find(self, event: evt.Event):
        """C-FIND: Pending 0xFF00 per match (0xFF01 when a key with a value is not indexed),
        then Success; 0xFE00 on C-CANCEL, or after ``find_limit`` matches when there are more."""
        try:
            query = self._query(event, retrieve=False)
        except QueryError as failure:
            logger.warning("%s: C-FIND from %s refused 0x%04X: %s", self.ae_title,
                           uids.shown(event.assoc.requestor.ae_title), failure.status, failure.comment)
            yield _status(failure.status, failure.comment), None
            return
        limit = int(self.knobs.get("find_limit") or 0)
        pending = 0xFF01 if query.unsupported else 0xFF00
        if find_answers.writable(event):
            # The Pending responses as bytes of SynthIQ's own encoders (a ledger's query may have
            # a response per study held); pynetdicom sends the final one.
            matches = self.index.find_studies(query) if query.level == STUDY else \
                (attrs for attrs, _ in self.index.find(query))
            answers = (self.index.response_elements(query, attrs, ae_title=self.ae_title) for attrs in matches)
            for final in find_answers.send_pending(event, pending, answers, limit=limit):
                if final == status.CANCEL and limit:
                    logger.info("%s: C-FIND capped at %d matches (find limit) or cancelled", self.ae_title, limit)
                yield final, None
            return
        sent = 0
        for attrs, _ in self.index.find(query):
            if event.is_cancelled:
                yield status.CANCEL, None  # Matching terminated due to cancel request
                return
            if limit and sent == limit:
                logger.info("%s: C-FIND capped at %d matches (find limit)", self.ae_title, limit)
                yield status.CANCEL, None  # the cap: as Orthanc's LimitFindResults answers
                return
            yield pending, self.index.response(query, attrs, ae_title=self.ae_title)
            sent += 1
        yield SUCCESS, None

    def _retrieve(self, event: evt.Event) -> tuple[list[Instance], Dataset | None]:
        """The instances a C-MOVE / C-GET asks for, or the failure to answer it with."""
        try:
            query = self._query(event, retrieve=True)
        except QueryError as failure:
            return [], _status(failure.status, failure.comment)
        found = list({i.sop_instance_uid: i for _, instances in self.index.find(query) for i in instances}.values())
        if found and self.store_dir is None:
            return found, _status(status.RETRIEVE_UNABLE_TO_PERFORM, NOT_KEPT)
        return found, None

    def _sub_operations(self, event: evt.Event, found: list[Instance], failure: Dataset | None):
        """The yields after the destination: the count, then each data set (or the failure)."""
        yield max(len(found), 1 if failure is not None else 0)
        if failure is not None:
            failed = Dataset()
            failed.FailedSOPInstanceUIDList = [i.sop_instance_uid for i in found]
            yield failure, failed
            return
        for instance in found:
            if event.is_cancelled:
                yield status.CANCEL, None  # Sub-operations terminated due to cancel
                return
            try:
                yield 0xFF00, dcmread(instance.path)  # Pending: a C-STORE sub-operation
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                logger.error("%s: %s cannot be read from %s: %s", self.ae_title, instance.sop_instance_uid,
                             instance.path, exc)
                # Not a data set: pynetdicom counts the sub-operation as failed.
                yield 0xFF00, f"unreadable {instance.sop_instance_uid}"

    def handle_move(self, event: evt.Event):
        """C-MOVE: a new association to the destination, one C-STORE per instance; 0xA801
        for a destination this node was not told about."""
        destination = self.move_destinations.get((event.move_destination or "").strip())
        calling = uids.shown(event.assoc.requestor.ae_title)
        if destination is None:
            logger.warning("%s: C-MOVE from %s to unknown destination %s: answered 0xA801", self.ae_title, calling,
                           uids.shown(event.move_destination or ""))
            yield None, None  # Failure: Move Destination unknown (0xA801)
            return
        found, failure = self._retrieve(event)
        logger.info("%s: C-MOVE from %s to %s at %s:%d: %d instances%s", self.ae_title, calling,
                    event.move_destination, *destination, len(found),
                    f", failed 0x{int(failure.Status):04X} {failure.ErrorComment}" if failure is not None else "")
        yield destination[0], destination[1], {"contexts": _contexts(found if failure is None else [])}
        yield from self._sub_operations(event, found, failure)

    def handle_get(self, event: evt.Event):
        """C-GET: one C-STORE per instance on the requester's own association."""
        found, failure = self._retrieve(event)
        logger.info("%s: C-GET from %s: %d instances%s", self.ae_title, uids.shown(event.assoc.requestor.ae_title),
                    len(found),
                    f", failed 0x{int(failure.Status):04X} {failure.ErrorComment}" if failure is not None else "")
        yield from self._sub_operations(event, found, failure)

    # -- storage commitment ----------------------------------------------------------------
    def handle_action(self, event: evt.Event) -> tuple[int | Dataset, None]:
        """N-ACTION Request Storage Commitment: answered at once, reported from a thread."""
        req = event.request
        if req.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            return NO_SUCH_ACTION, None
        if str(req.RequestedSOPInstanceUID).rstrip("\0 ") != COMMITMENT_INSTANCE:
            return INVALID_OBJECT_INSTANCE, None
        try:
            info = event.action_information
            transaction = str(info.TransactionUID)
            references = [(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                          for item in info.get("ReferencedSOPSequence", [])]
        except Exception as exc:  # pydicom raises many types on bytes that are not DICOM
            return _status(status.PROCESSING_FAILURE, f"action information unreadable: {exc}"), None
        for name, value in [("Transaction UID", transaction), *[
                (f"Referenced SOP {kind} UID", uid) for pair in references
                for kind, uid in zip(("Class", "Instance"), pair, strict=True)]]:
            if problem := uids.uid_problem(value):
                return _status(status.INVALID_ARGUMENT_VALUE, uids.comment(name, problem)), None
        if not references:
            return _status(status.INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence empty"), None
        threading.Thread(target=self._report, args=(event.assoc, transaction, references),
                         name="commitment-report", daemon=True).start()
        return SUCCESS, None

    def _report(self, assoc, transaction: str, references: list[tuple[str, str]]) -> None:
        """The N-EVENT-REPORT: on the requester's association while it is open (after the
        N-ACTION-RSP has gone), else on a new one to the requester's known address."""
        time.sleep(float(self.knobs.get("commitment_delay_ms", 200)) / 1000)
        committed, failed = [], []
        for sop_class, sop in references:
            held = self.index.get(sop)
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop
            if held is not None and held.sop_class_uid == sop_class:
                committed.append(item)
            else:
                item.FailureReason = status.NO_SUCH_OBJECT_INSTANCE if held is None else CLASS_INSTANCE_CONFLICT
                failed.append(item)
        info = Dataset()
        info.TransactionUID = transaction
        info.RetrieveAETitle = self.ae_title
        if committed:
            info.ReferencedSOPSequence = committed
        if failed:
            info.FailedSOPSequence = failed
        event_type = COMMITTED_WITH_FAILURES if failed else COMMITTED_ALL
        requester = assoc.requestor.ae_title
        record = {"transaction": transaction, "requester": requester, "committed": len(committed),
                  "failed": len(failed), "delivered": ""}
        if assoc.is_established:
            rsp, _ = assoc.send_n_event_report(info, event_type, PUSH, COMMITMENT_INSTANCE)
            if "Status" in rsp:
                record["delivered"] = "same association"
        if not record["delivered"]:
            record["delivered"] = self._report_anew(requester, info, event_type)
        logger.info("%s: storage commitment transaction=%s requester=%s committed=%d failed=%d: %s", self.ae_title,
                    transaction, uids.shown(requester), len(committed), len(failed), record["delivered"])
        with self.lock:
            self.reports.append(record)

    def _report_anew(self, requester: str, info: Dataset, event_type: int) -> str:
        address = self.commitment_requesters.get(requester)
        if address is None:
            return f"not sent: no answer on the requester's association and no address known for {requester!r} " \
                   "(runbackend --commitment-requester AE=host:port)"
        assert self.ae is not None
        assoc = self.ae.associate(
            address[0], address[1], ae_title=requester,
            contexts=[build_context(sop_classes.STORAGE_COMMITMENT_PUSH)],
            ext_neg=[build_role(sop_classes.STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)])
        if not assoc.is_established:
            return f"not sent: {requester} at {address[0]}:{address[1]} did not accept an association"
        try:
            rsp, _ = assoc.send_n_event_report(info, event_type, PUSH, COMMITMENT_INSTANCE)
        finally:
            assoc.release()
        if "Status" not in rsp:
            return f"not confirmed: {requester} at {address[0]}:{address[1]} did not answer"
        return f"new association to {address[0]}:{address[1]}"

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


def _status(code: int, comment: str) -> Dataset:
    """A status with an Error Comment (LO: at most 64 characters)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _file_name(uid: str) -> str:
    """A UID as a file name: itself when valid, else a digest (never a path of the peer's choosing)."""
    if not uids.uid_problem(uid):
        return uid
    return "invalid-" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:16]


def _contexts(instances: list[Instance]) -> list[PresentationContext]:
    """The presentation contexts a move destination is asked for: each stored (SOP class,
    transfer syntax), uncompressed ones with the other uncompressed syntax as a fallback."""
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax) for i in instances)
    contexts = []
    for sop_class, ts in list(pairs)[:128]:
        syntaxes = [ts, *(u for u in UNCOMPRESSED if u != ts)] if UID(ts) in UNCOMPRESSED else [ts]
        contexts.append(build_context(sop_class, syntaxes))
    return contexts or [build_context(Verification)]


def _listen(ae_title: str, what: str, host: str, port: int, start: Callable[[], T]) -> T:
    try:
        return start()
    except OSError as exc:
        raise SimulatorError(f"{ae_title}: cannot listen on {host}:{port} ({what}): {exc.strerror or exc}") from None


def handle_echo(event: evt.Event) -> int:
    return SUCCESS  # C-ECHO: Success


class _Handler(BaseHTTPRequestHandler):
    """The HTTP side: /api/health, what the node holds and saw, and the knobs."""

    backend: SimulatedBackend  # set per node by http_handler

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
            mode = self.backend.knobs.get("health", "ok")
            if mode == "hang":
                time.sleep(self.backend.knobs.get("hang_seconds", 30))
            if mode == "down":
                return self._json(503, {"status": "down"})
            if mode == "garbage":
                return self._json(200, {"status": "ok", "queue": "lots"})
            return self._json(200, self.backend.health())
        if self.path == "/api/requests":
            with self.backend.lock:
                return self._json(200, list(self.backend.requests))
        if self.path == "/api/associations":
            with self.backend.lock:
                return self._json(200, dict(self.backend.associations))
        if self.path == "/api/holdings":
            with self.backend.lock:
                return self._json(200, json.loads(json.dumps(self.backend.holdings)))
        if self.path == "/api/commitments":
            with self.backend.lock:
                return self._json(200, list(self.backend.reports))
        return self._json(404, {"error": "not found"})

    def do_POST(self):
        if self.path == "/api/instances":
            length = int(self.headers.get("Content-Length", 0))
            try:
                added = self.backend.seed(json.loads(self.rfile.read(length) or b"[]"))
            except ValueError as exc:
                return self._json(400, {"error": str(exc)})
            return self._json(200, {"added": added})
        if self.path != "/api/control":
            return self._json(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length", 0))
        try:
            update = json.loads(self.rfile.read(length) or b"{}")
            if isinstance(update.get("status"), str):
                update["status"] = int(update["status"], 16)
        except (ValueError, AttributeError) as exc:
            return self._json(400, {"error": str(exc)})
        self.backend.knobs.update(update)
        if "reject" in update and self.backend.ae is not None:
            # Refuse every association (A-ASSOCIATE-RJ, calling AE not recognised) while set.
            self.backend.ae.require_calling_aet = ["NOBODY-AT-ALL"] if update["reject"] else []
        return self._json(200, self.backend.knobs)

    def do_DELETE(self):
        if self.path == "/api/holdings":  # forget everything (the files stay where they are)
            self.backend.index.clear()
            with self.backend.lock:
                self.backend.holdings.clear()
            return self._json(200, {})
        if self.path.startswith("/api/instances/"):  # lose one instance, as a node that loses data
            sop = self.path.removeprefix("/api/instances/")
            instance = self.backend.index.remove(sop)
            if instance is None:
                return self._json(404, {"error": "not held"})
            with self.backend.lock:
                study = self.backend.holdings.get(instance.shared[STUDY_UID], {})
                study.pop(sop, None)
                if not study:
                    self.backend.holdings.pop(instance.shared[STUDY_UID], None)
            if instance.path is not None:
                instance.path.unlink(missing_ok=True)
            return self._json(200, {})
        return self._json(404, {"error": "not found"})


def http_handler(backend: SimulatedBackend) -> type[BaseHTTPRequestHandler]:
    """The HTTP request handler class for ``backend``'s node."""
    return type("Handler", (_Handler,), {"backend": backend})


def _node_ae(ae_title: str, *, max_pdu: int, offered: tuple[str, ...]) -> AE:
    """The node's pynetdicom AE: what it accepts, its limits and timers."""
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 64
    ae.maximum_pdu_size = max_pdu  # 0: "no limit", as some PACS announce
    ae.dimse_timeout = ae.network_timeout = 600
    ae.acse_timeout = ae.connection_timeout = 30  # its own associations: move destinations, requesters
    ae.add_supported_context(Verification)
    for name in offered:
        for abstract in sop_classes.SERVICE_CLASSES[name]:
            if abstract == sop_classes.STORAGE_COMMITMENT_PUSH:
                # Either role: a requester that offers the SCP role may get its report on this association.
                ae.add_supported_context(abstract, scu_role=True, scp_role=True)
            else:
                ae.add_supported_context(abstract)
    return ae


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
    move_destinations: dict[str, tuple[str, int]] | None = None,
    commitment_requesters: dict[str, tuple[str, int]] | None = None,
    offered: tuple[str, ...] = tuple(sop_classes.SERVICE_CLASSES),
) -> None:
    """Run a simulated backend until SIGTERM or SIGINT; ``announce`` gets the ready line.
    ``offered`` names the services besides storage and C-ECHO it accepts (the keys of
    ``routing.dicom.sop_classes.SERVICE_CLASSES``): a node without them refuses their contexts."""
    _config.UNRESTRICTED_STORAGE_SERVICE = True  # take any storage SOP class, private ones too
    _config.STORE_RECV_CHUNKED_DATASET = True  # data sets go to a file, never whole into memory
    _config.LOG_HANDLER_LEVEL = "none"
    if store_dir is not None:
        store_dir.mkdir(parents=True, exist_ok=True)  # /api/health reports its free space
    backend = SimulatedBackend(store_dir=store_dir, knobs=knobs, ae_title=ae_title,
                               move_destinations=move_destinations, commitment_requesters=commitment_requesters)
    reloaded = backend.reload()
    ae = backend.ae = _node_ae(ae_title, max_pdu=max_pdu, offered=offered)
    handlers = [
        (evt.EVT_CONN_OPEN, tune_pynetdicom),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, backend.handle_store),
        (evt.EVT_C_FIND, backend.handle_find),
        (evt.EVT_C_MOVE, backend.handle_move),
        (evt.EVT_C_GET, backend.handle_get),
        (evt.EVT_N_ACTION, backend.handle_action),
        (evt.EVT_RELEASED, backend.count_association, ["released"]),
        (evt.EVT_ABORTED, backend.count_association, ["aborted"]),
    ]
    # The health endpoint first: once the DICOM port answers, both do.
    http = _listen(ae_title, "HTTP", host, http_port,
                   lambda: ThreadingHTTPServer((host, http_port), http_handler(backend)))
    server = _listen(ae_title, "DICOM", host, port,
                     lambda: ae.start_server((host, port), block=False, evt_handlers=handlers))
    http.daemon_threads = True
    # Polled every 50 ms: SIGTERM stops the HTTP side at once (tests stop hundreds of these).
    threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, name="backend-http",
                     daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    names = {"find": "C-FIND", "get": "C-GET", "storage_commitment": "storage commitment",
             "move": "C-MOVE (" + (", ".join(f"{t}={h}:{p}" for t, (h, p) in backend.move_destinations.items())
                                   or "no destination") + ")"}
    served = ", ".join(["storage", *(names[name] for name in offered)])
    kept = f"; {reloaded} instances found in {store_dir}" if store_dir is not None else \
        " (discard mode: C-MOVE/C-GET fail, no data kept)"
    announce(f"runbackend ready: {ae_title}@{host}:{port} http:{http_port} serving {served}{kept}")
    stop.wait()
    server.shutdown()
    http.shutdown()
