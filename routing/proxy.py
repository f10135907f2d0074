"""The DICOM front door and the forwarder.

Each pool gets one pynetdicom Storage SCP listener. Incoming data sets are spooled
to a small transient file by pynetdicom (``STORE_RECV_CHUNKED_DATASET``), the header
is scanned for the Study Instance UID, the study is routed, and the file's bytes are
sent unchanged over a pooled outbound association whose presentation contexts mirror
the inbound ones (``STORE_SEND_CHUNKED_DATASET``). Memory stays bounded: the inbound
side writes to the spool as PDUs arrive, and the outbound side's PDU queue is capped.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynetdicom.association
import pynetdicom.dul
from django.db import connection
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from routing import transport
from routing.negotiation import prefer_accepted, probe_transfer_syntaxes, syntax_ranks
from routing.router import BackendAddress, Router
from routing.scan import HeaderError, scan_header
from routing.stats import Stats

logger = logging.getLogger("synthiq.routing")

# Pass-through configuration of pynetdicom (process-wide flags; runproxy owns its process).
_config.UNRESTRICTED_STORAGE_SERVICE = True  # accept every storage class, private ones too
_config.STORE_RECV_CHUNKED_DATASET = True  # spool inbound data sets to a file, not RAM
_config.STORE_SEND_CHUNKED_DATASET = True  # send a file's bytes as they are
_config.LOG_HANDLER_LEVEL = "none"
transport.install()  # bounded, fast socket reads (see routing/transport.py)


class _PromptIdleWait:
    """Stands in for the ``time`` module inside pynetdicom's ``dul`` and ``association``
    modules. Their reactor loops poll: when idle they sleep one tick (1 ms) and look
    again, so each PDU and each complete DIMSE message waits for the next tick of two
    loops. Here the same idle wait ends as soon as there is work: a DUL thread waits for
    its socket to become readable, an acceptor association's reactor for a message on
    its DIMSE queue. Idle cost is unchanged (still at most one wake-up per tick); shorter
    sleeps (pynetdicom's 0.1 ms pause loops) and every other ``time`` use pass through."""

    TICK = 0.001

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds >= _PromptIdleWait.TICK:
            thread = threading.current_thread()
            if isinstance(thread, DULServiceProvider):
                assoc_socket = thread.socket
                raw = getattr(assoc_socket, "socket", None)
                if raw is not None and getattr(assoc_socket, "_is_connected", False):
                    if isinstance(raw, ssl.SSLSocket) and raw.pending():
                        return  # decrypted bytes already buffered: no need to wait
                    try:
                        select.select([raw], [], [], seconds)
                        return
                    except (OSError, ValueError):
                        pass  # closed under us: plain sleep, pynetdicom notices the close
            elif isinstance(thread, Association) and thread.is_acceptor:
                messages = thread.dimse.msg_queue
                with messages.not_empty:
                    if not messages._qsize():
                        messages.not_empty.wait(seconds)
                return
        time.sleep(seconds)


pynetdicom.dul.time = _PromptIdleWait()  # type: ignore[assignment]
pynetdicom.association.time = _PromptIdleWait()  # type: ignore[assignment]

# Outbound PDUs queued ahead of the socket, per association: bounds memory whatever
# the instance size (pynetdicom would otherwise queue a whole instance at once).
OUTBOUND_PDU_QUEUE = 16

# C-STORE statuses SynthIQ itself returns (anything else is the backend's, verbatim).
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (no backend to send to)
STATUS_BACKEND_UNREACHABLE = 0xA701  # Refused: Out of Resources - backend association failed
STATUS_BACKEND_NO_RESPONSE = 0xA702  # Refused: Out of Resources - backend aborted / timed out
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: backend did not accept the context
STATUS_CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (header unreadable, no SUID)


def _set_nodelay(event: evt.Event) -> None:
    """TCP_NODELAY on every socket: Nagle plus delayed ACK caps a proxy near 24 inst/s."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _status(code: int, comment: str, offending: list[int] | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: 64 characters at most
    if offending:
        ds.OffendingElement = offending
    return ds


def _bound_pdu_queue(assoc: Association, limit: int) -> None:
    dul = assoc.dul
    send = dul.send_pdu

    def bounded_send_pdu(primitive: Any) -> None:
        while dul.to_provider_queue.qsize() >= limit and dul.is_alive() and not dul._kill_thread:
            time.sleep(0.0002)
        send(primitive)

    dul.send_pdu = bounded_send_pdu  # type: ignore[method-assign]


class OutboundUnavailable(Exception):
    def __init__(self, status: int, comment: str):
        super().__init__(comment)
        self.status, self.comment = status, comment


def _keep_stray_responses(assoc: Association) -> None:
    """Guard against pynetdicom's reactor race (pydicom/pynetdicom#875): the reactor can
    take a C-STORE response off the DIMSE queue as the sender starts waiting for it and
    drop it as "unexpected", leaving the forward hung for the whole DIMSE timeout. Such a
    response is put back for its waiter instead."""
    serve = assoc._serve_request

    def serve_request(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_request  # type: ignore[method-assign]


_META_HEAD = struct.Struct("<4sHH2sHI")  # b"DICM", (0002,0000) UL, length 4, its value


def _dataset_offset(path: str | Path) -> int:
    """Where the data set starts in a spool file pynetdicom wrote: after the preamble,
    b"DICM" and the file meta group, whose length its first element gives. Reading it
    directly saves decoding the file meta with pydicom on every C-STORE."""
    with open(path, "rb") as fp:
        fp.seek(128)
        head = fp.read(_META_HEAD.size)
    if len(head) == _META_HEAD.size:
        magic, group, element, vr, length, value = _META_HEAD.unpack(head)
        if magic == b"DICM" and (group, element, vr, length) == (0x0002, 0x0000, b"UL", 4):
            return 128 + _META_HEAD.size + value
    return split_dataset(Path(path))[1]  # not the layout pynetdicom writes: let pydicom read it


def _next_message(assoc: Association) -> Any | None:
    """The next DIMSE message from the backend, or None on timeout, abort or close.

    pynetdicom wakes a waiter on abort by queueing a (None, None) marker, but with the
    reactor not paused its own non-blocking poll can take that marker first, which would
    leave this wait blocked for the whole DIMSE timeout. So wait in short slices and look
    at the association's state between them."""
    deadline = time.monotonic() + (assoc.dimse_timeout or 600)
    while time.monotonic() < deadline:
        try:
            _, msg = assoc.dimse.msg_queue.get(timeout=0.05)
        except queue.Empty:
            if assoc.acse.is_aborted() or not assoc.dul.is_alive() or assoc.is_aborted:
                return None
            continue
        return msg  # None when it is pynetdicom's abort marker
    return None


def _send_file(assoc: Association, req: Any, path: str | Path, offset: int, transfer_syntax: str) -> Dataset:
    """``send_c_store(path)`` without its per-call costs: the SOP class and instance come
    from the inbound request (pynetdicom wrote the spool's file meta from them) instead of
    decoding the file meta again, and the reactor is not paused (a 0.1 ms polling wait per
    C-STORE) since ``_keep_stray_responses`` hands a response the reactor takes back to
    this waiter. The data set bytes are sent from the spool file as they are. Returns the
    status Dataset (empty when the backend timed out or aborted); raises ValueError when
    no accepted context fits, as ``send_c_store`` does."""
    context = assoc._get_valid_context(req.AffectedSOPClassUID, transfer_syntax, "scu", allow_conversion=False)
    rq = C_STORE()
    rq.MessageID = req.MessageID
    rq.Priority = req.Priority
    rq.MoveOriginatorApplicationEntityTitle = req.MoveOriginatorApplicationEntityTitle
    rq.MoveOriginatorMessageID = req.MoveOriginatorMessageID
    rq.AffectedSOPClassUID = req.AffectedSOPClassUID
    rq.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
    rq._dataset_path = (Path(path), offset)
    assoc.dimse.send_msg(rq, context.context_id)
    while True:
        rsp = _next_message(assoc)
        if rsp is None:  # DIMSE timeout, abort or closed connection
            assoc._handle_no_response()
            return Dataset()
        if isinstance(rsp, C_STORE) and rsp.MessageIDBeingRespondedTo == rq.MessageID:
            return assoc._check_received_status(rsp)
        # Never take another message's answer for this one's.
        logger.warning("backend sent an unexpected %s (responding to %s) while message %s was in flight: ignored",
                       type(rsp).__name__, getattr(rsp, "MessageIDBeingRespondedTo", None), rq.MessageID)


@dataclass(frozen=True)
class PoolListenerConfig:
    id: str
    ae_title: str
    host: str
    port: int
    allowed_calling_ae_titles: list[str]
    tls: dict | None = None


@dataclass(frozen=True)
class NetworkConfig:
    acse_timeout: float = 30
    dimse_timeout: float = 600
    network_timeout: float = 600
    connect_timeout: float = 10
    max_associations: int = 64
    max_pdu: int = 262144

    @classmethod
    def from_config(cls, network: dict) -> NetworkConfig:
        return cls(
            acse_timeout=network["AcseTimeoutSeconds"],
            dimse_timeout=network["DimseTimeoutSeconds"],
            network_timeout=network["NetworkTimeoutSeconds"],
            connect_timeout=network["ConnectTimeoutSeconds"],
            max_associations=network["MaxAssociations"],
            max_pdu=network["MaxPduBytes"],
        )


class _DeferredHandshakeContext(ssl.SSLContext):
    """pynetdicom wraps accepted sockets on its accept thread; with the default
    handshake-on-connect one client that never sends a ClientHello would stall the whole
    listener. Deferring it moves the handshake to the association's own first read."""

    def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[override]
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def _server_tls(tls: dict) -> ssl.SSLContext:
    ctx = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls["Certificate"], tls["Key"])
    if tls.get("CA"):
        ctx.load_verify_locations(tls["CA"])
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.get("RequireClientCertificate") else ssl.CERT_NONE
    return ctx


def _client_tls(tls: dict) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.get("CA"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.get("Certificate"):
        ctx.load_cert_chain(tls["Certificate"], tls["Key"])
    return ctx


@dataclass
class Session:
    """One inbound association: its routed studies and its pooled outbound associations."""

    pool: PoolListenerConfig
    calling_ae: str
    source_ip: str
    contexts: list = field(default_factory=list)
    studies: dict[str, str] = field(default_factory=dict)
    outbound: dict[str, Association] = field(default_factory=dict)
    rx: int = 0
    fwd: int = 0
    failed: int = 0
    cache_hits: int = 0
    closed: bool = False


class Proxy:
    def __init__(self, *, pools: list[PoolListenerConfig], network: NetworkConfig, router: Router, stats: Stats):
        self.pools = pools
        self.network = network
        self.router = router
        self.stats = stats
        self._servers: list[Any] = []
        self._sessions: dict[int, Session] = {}
        self._lock = threading.Lock()
        self._outbound_aes: dict[str, AE] = {}
        self._in_flight = 0
        self._in_flight_done = threading.Condition()
        self.accepting = False
        # Per pool: transfer syntax -> how many backends accept it (see negotiation.py).
        self.syntax_ranks: dict[str, dict[str, int]] = {}

    # -- lifecycle ------------------------------------------------------------
    def probe_backends(self) -> None:
        """Learn which transfer syntaxes each pool's enabled backends accept."""
        for pool in self.pools:
            accepted = []
            for state in self.router.states(pool.id):
                if not state.enabled:
                    continue
                backend = self.router.address(state.id)
                accepted.append(probe_transfer_syntaxes(
                    ae=self._outbound_ae(pool.ae_title), host=backend.host, port=backend.port,
                    ae_title=backend.ae_title,
                    tls_args=(_client_tls(backend.tls), backend.host) if backend.tls else None,
                ))
            self.syntax_ranks[pool.id] = syntax_ranks(accepted)
            logger.info("pool=%s transfer syntaxes accepted by its backends: %s", pool.id,
                        {ts: n for ts, n in sorted(self.syntax_ranks[pool.id].items())} or "unknown")

    def _association_died(self, args: threading.ExceptHookArgs) -> None:
        """An inbound association's own thread died inside pynetdicom (e.g. writing the
        spool file on a full disk): no end event will come, so end it here, with ids."""
        # The thread is the association's DUL (its network reactor) or the association.
        assoc = getattr(args.thread, "assoc", args.thread)
        if not isinstance(assoc, Association) or not assoc.is_acceptor:
            return self._previous_excepthook(args)
        requestor = assoc.requestor
        logger.error(
            "association from calling_ae=%s source_ip=%s failed mid-transfer: %s: %s; "
            "aborting it (the sender gets no success)",
            requestor.ae_title, requestor.address, args.exc_type.__name__, args.exc_value,
        )
        self.end_session(assoc, released=False)
        if not assoc.is_aborted and not assoc.is_released:
            threading.Thread(target=assoc.abort, name="abort-after-failure", daemon=True).start()

    def start(self) -> None:
        self._previous_excepthook = threading.excepthook
        threading.excepthook = self._association_died
        self.probe_backends()
        for pool in self.pools:
            ae = AE(ae_title=pool.ae_title)
            ae.require_called_aet = True
            ae.require_calling_aet = list(pool.allowed_calling_ae_titles)
            ae.maximum_associations = self.network.max_associations
            ae.maximum_pdu_size = self.network.max_pdu
            ae.acse_timeout = self.network.acse_timeout
            ae.dimse_timeout = self.network.dimse_timeout
            ae.network_timeout = self.network.network_timeout
            ae.add_supported_context(Verification)
            handlers = [
                (evt.EVT_CONN_OPEN, _set_nodelay),
                (evt.EVT_REQUESTED, handle_requested, [self, pool]),
                (evt.EVT_C_ECHO, handle_echo),
                (evt.EVT_C_STORE, handle_store, [self, pool]),
                (evt.EVT_RELEASED, handle_end, [self, True]),
                (evt.EVT_ABORTED, handle_end, [self, False]),
                (evt.EVT_CONN_CLOSE, handle_end, [self, False]),
            ]
            server = ae.start_server(
                (pool.host, pool.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=_server_tls(pool.tls) if pool.tls else None,
            )
            self._servers.append(server)
            logger.info("listening pool=%s ae=%s on %s:%d", pool.id, pool.ae_title, pool.host, pool.port)
        self.accepting = True

    def stop(self, *, grace_seconds: float = 10) -> None:
        """Stop accepting, let in-flight C-STOREs finish (bounded), release outbound
        associations, then abort what is still open inbound."""
        self.accepting = False
        for server in self._servers:
            server.shutdown()
        deadline = time.monotonic() + grace_seconds
        with self._in_flight_done:
            while self._in_flight and time.monotonic() < deadline:
                self._in_flight_done.wait(timeout=0.1)
            if self._in_flight:
                logger.warning("stopping with %d C-STORE(s) still in flight", self._in_flight)
        with self._lock:
            sessions = list(self._sessions.items())
        for _, session in sessions:
            self._close_outbound(session, release=True)
        for server in self._servers:
            for assoc in list(server.active_associations):
                assoc.abort()
        self._servers = []

    # -- sessions -------------------------------------------------------------
    def session(self, assoc: Association, pool: PoolListenerConfig) -> Session:
        key = id(assoc)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = Session(
                    pool=pool,
                    calling_ae=assoc.requestor.ae_title,
                    source_ip=assoc.requestor.address,
                    contexts=[
                        build_context(cx.abstract_syntax, cx.transfer_syntax[0])
                        for cx in assoc.accepted_contexts
                    ],
                )
                self._sessions[key] = session
                self.stats.association_opened()
            return session

    def end_session(self, assoc: Association, *, released: bool) -> None:
        with self._lock:
            session = self._sessions.pop(id(assoc), None)
        if session is None or session.closed:
            return
        session.closed = True
        self._close_outbound(session, release=released)
        self.stats.association_closed()
        logger.info(
            "association %s pool=%s calling_ae=%s source_ip=%s rx=%d fwd=%d failed=%d studies=%d "
            "cache-hits=%d backends=%d",
            "released" if released else "aborted", session.pool.id, session.calling_ae,
            session.source_ip, session.rx, session.fwd, session.failed, len(session.studies),
            session.cache_hits, len(set(session.studies.values())),
        )
        connection.close()  # this association's thread ends: do not leak its DB connection

    def _close_outbound(self, session: Session, *, release: bool) -> None:
        outbound, session.outbound = session.outbound, {}
        for backend_id, assoc in outbound.items():
            if not assoc.is_established:
                continue
            if release:
                assoc.release()
            else:
                assoc.abort()
            logger.debug("outbound to %s %s", backend_id, "released" if release else "aborted")

    def _outbound_ae(self, calling_ae: str) -> AE:
        with self._lock:
            ae = self._outbound_aes.get(calling_ae)
            if ae is None:
                ae = AE(ae_title=calling_ae)
                ae.acse_timeout = self.network.acse_timeout
                ae.dimse_timeout = self.network.dimse_timeout
                ae.network_timeout = self.network.network_timeout
                ae.connection_timeout = self.network.connect_timeout
                ae.maximum_pdu_size = self.network.max_pdu
                self._outbound_aes[calling_ae] = ae
            return ae

    def outbound(self, session: Session, backend: BackendAddress) -> Association:
        """The session's association to ``backend``, (re-)established when needed.
        Raises OutboundUnavailable with the status to return when it cannot be had."""
        assoc = session.outbound.get(backend.id)
        if assoc is not None and assoc.is_established:
            return assoc
        # The backend sees the modality's own calling AE title, as behind an L4 balancer.
        ae = self._outbound_ae(session.calling_ae)
        tls_args = (_client_tls(backend.tls), backend.host) if backend.tls else None
        assoc = ae.associate(
            backend.host,
            backend.port,
            contexts=session.contexts,
            ae_title=backend.ae_title,
            max_pdu=self.network.max_pdu,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay)],
        )
        if assoc.is_established:
            _bound_pdu_queue(assoc, OUTBOUND_PDU_QUEUE)
            _keep_stray_responses(assoc)
            session.outbound[backend.id] = assoc
            return assoc
        if assoc.is_rejected:
            raise OutboundUnavailable(STATUS_BACKEND_UNREACHABLE, f"backend {backend.id} rejected the association")
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            raise OutboundUnavailable(
                STATUS_SOP_CLASS_NOT_SUPPORTED, f"backend {backend.id} refused SOP class/syntax"
            )
        raise OutboundUnavailable(STATUS_BACKEND_UNREACHABLE, f"backend {backend.id} unreachable")

    # -- in-flight accounting ---------------------------------------------------
    def begin_store(self) -> None:
        with self._in_flight_done:
            self._in_flight += 1

    def end_store(self) -> None:
        with self._in_flight_done:
            self._in_flight -= 1
            self._in_flight_done.notify_all()


def handle_requested(event: evt.Event, proxy: Proxy, pool: PoolListenerConfig) -> None:
    """Before negotiation: prefer, in each proposed context, a syntax the backends accept."""
    ranks = proxy.syntax_ranks.get(pool.id)
    if ranks:
        for cx in event.assoc.requestor.primitive.presentation_context_definition_list:
            cx.transfer_syntax = prefer_accepted(list(cx.transfer_syntax), ranks)


def handle_echo(event: evt.Event) -> int:
    return 0x0000  # Success


def handle_end(event: evt.Event, proxy: Proxy, released: bool) -> None:
    proxy.end_session(event.assoc, released=released)


def handle_store(event: evt.Event, proxy: Proxy, pool: PoolListenerConfig) -> Dataset | int:
    proxy.begin_store()
    try:
        return _store(event, proxy, pool)
    except Exception:  # never let a bug become a silent success or a hung association
        logger.exception("pool=%s unexpected error forwarding a C-STORE", pool.id)
        proxy.stats.forward_failed(None, 0xA700)
        return _status(STATUS_OUT_OF_RESOURCES, "SynthIQ internal error; see proxy log")
    finally:
        proxy.end_store()


def _store(event: evt.Event, proxy: Proxy, pool: PoolListenerConfig) -> Dataset | int:
    started = time.perf_counter()
    session = proxy.session(event.assoc, pool)
    session.rx += 1
    req = event.request
    sop_uid = str(req.AffectedSOPInstanceUID)
    path = event.dataset_path
    transfer_syntax = event.context.transfer_syntax

    offset = _dataset_offset(path)
    try:
        with open(path, "rb") as fp:
            fp.seek(offset)
            header = scan_header(fp=fp, transfer_syntax=transfer_syntax)
    except HeaderError as exc:
        session.failed += 1
        proxy.stats.forward_failed(None, STATUS_CANNOT_UNDERSTAND)
        logger.error(
            "pool=%s calling_ae=%s source_ip=%s sop=%s rejected: %s",
            pool.id, session.calling_ae, session.source_ip, sop_uid, exc,
        )
        return _status(STATUS_CANNOT_UNDERSTAND, str(exc), [0x0020000D])

    suid = header.study_uid
    backend_id = session.studies.get(suid)
    if backend_id is not None:
        session.cache_hits += 1
        proxy.stats.routed("association-cached")
    else:
        route = proxy.router.route(pool_id=pool.id, study_uid=suid)
        if route.backend_id is None:
            session.failed += 1
            proxy.stats.forward_failed(None, STATUS_OUT_OF_RESOURCES)
            logger.error("pool=%s study=%s sop=%s: no enabled backend can take it", pool.id, suid, sop_uid)
            return _status(STATUS_OUT_OF_RESOURCES, f"pool {pool.id}: no backend available")
        backend_id = route.backend_id
        session.studies[suid] = backend_id
        if route.cache_hit:
            session.cache_hits += 1
        proxy.stats.decided(
            pool_id=pool.id, study_uid=suid, backend_id=backend_id, reason=route.reason,
            calling_ae=session.calling_ae, source_ip=session.source_ip, modality=header.modality,
        )
        logger.info(
            "route pool=%s calling_ae=%s source_ip=%s study=%s sop=%s modality=%s patient_id=%s "
            "backend=%s reason=%s",
            pool.id, session.calling_ae, session.source_ip, suid, sop_uid, header.modality,
            header.patient_id, backend_id, route.reason,
        )
    proxy.router.store.touch((pool.id, suid))

    try:
        assoc = proxy.outbound(session, proxy.router.address(backend_id))
    except OutboundUnavailable as exc:
        session.failed += 1
        proxy.stats.forward_failed(backend_id, exc.status)
        logger.error("pool=%s study=%s sop=%s: %s", pool.id, suid, sop_uid, exc.comment)
        return _status(exc.status, exc.comment)

    proxy.router.note_sent(backend_id)
    try:
        rsp = _send_file(assoc, req, path, offset, transfer_syntax)
    except ValueError as exc:
        # The backend accepted the association but not this SOP class with this syntax.
        session.failed += 1
        proxy.stats.forward_failed(backend_id, STATUS_SOP_CLASS_NOT_SUPPORTED)
        logger.error("pool=%s study=%s sop=%s: backend %s refused SOP class/syntax (%s)",
                     pool.id, suid, sop_uid, backend_id, exc)
        return _status(STATUS_SOP_CLASS_NOT_SUPPORTED, f"backend {backend_id} refused SOP class/syntax")

    if "Status" not in rsp:
        # Timed out or aborted mid-transfer: never report success for it.
        session.failed += 1
        session.outbound.pop(backend_id, None)
        proxy.stats.forward_failed(backend_id, STATUS_BACKEND_NO_RESPONSE)
        logger.error(
            "pool=%s study=%s sop=%s backend=%s aborted or timed out before answering",
            pool.id, suid, sop_uid, backend_id,
        )
        return _status(STATUS_BACKEND_NO_RESPONSE, f"backend {backend_id} aborted/timed out")

    status = int(rsp.Status)
    if status in (0x0000, 0xB000, 0xB006, 0xB007):
        session.fwd += 1
    else:
        session.failed += 1
    proxy.stats.forwarded(backend_id, status, time.perf_counter() - started)
    if status != 0x0000:
        logger.warning(
            "pool=%s study=%s sop=%s backend=%s answered 0x%04X %s",
            pool.id, suid, sop_uid, backend_id, status, rsp.get("ErrorComment", ""),
        )
    return rsp  # the backend's status, comment and offending element, verbatim
