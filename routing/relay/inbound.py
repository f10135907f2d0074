"""One inbound association, from the modality's connect to its release or abort.

The coroutine ``InboundAssociation.run`` negotiates, then serves one DIMSE operation at
a time (no asynchronous operations window is granted):

- C-ECHO is answered here.
- C-STORE: the command and the first data set fragments are held (up to
  ``hold_bytes``) until the Study Instance UID has been read; the study is routed (a hot
  cache hit inline, anything else on the router's batching thread, so the loop never
  waits on the database); the command and the held fragments go to the backend's
  association, and every further fragment is passed on as it arrives, re-framed to the
  backend's max PDU when it is smaller than the modality's PDUs. The backend's
  C-STORE-RSP goes back as the bytes it sent.

Never a false success: the modality gets the backend's status only; anything that goes
wrong on the way is answered, after the rest of the instance has been read and
dropped, with SynthIQ's own failure status (``routing.dicom.status``) and a comment
naming the backend. If the modality aborts mid-instance, the backend's association is
aborted too, so the backend never completes a partial instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext

from routing.dicom import commands, negotiation, pdu, status, uids
from routing.dicom.pdu import ProtocolError
from routing.dicom.scan import Header, HeaderError, HeaderScanner
from routing.relay.connection import ConnectionClosed, PduConnection, TimedOut
from routing.relay.failures import LinkLost, OperationFailed, Violation
from routing.relay.operations import QUERY_RETRIEVE, Operations
from routing.relay.outbound import BackendLink, OutboundUnavailable
from routing.relay.peer import ModalityPeer, relay_message
from routing.relay.stream import PeerAborted, PeerReleaseReply, PeerReleaseRequest
from routing.waterfall import ASSOCIATION_CACHED

if TYPE_CHECKING:
    from routing.relay.server import PoolListener, Relay

logger = logging.getLogger("synthiq.routing")

# After an A-ABORT, how long the peer has to close the connection itself (PS3.8 ARTIM).
ABORT_LINGER_SECONDS = 2.0
HOLD_RETRY_SECONDS = 0.5  # how often a held association tries its backend again


def _logged_uid(value: str) -> str:
    """A UID for a log line: as it is when valid, escaped and cut when not, "-" when absent."""
    if not value:
        return "-"
    return value if uids.uid_problem(value) is None else uids.shown(value)


def _sop_class_name(uid: str) -> str:
    """A SOP class's keyword and UID for a log line (the UID alone when pydicom does not know it)."""
    name = UID(uid).keyword
    return f"{name} ({uid})" if name else uid


class InboundAssociation:
    def __init__(self, relay: Relay, listener: PoolListener, conn: PduConnection):
        self.relay = relay
        self.listener = listener
        self.pool_id = listener.id
        self.conn = conn
        self.network = relay.network
        self.calling_ae = self.called_ae = ""
        # A backend's own AE title called (an archive reporting to it): that backend.
        self.called_backend: str | None = None
        self.source_ip = conn.peer[0]
        self.links: dict[str, BackendLink] = {}
        self.studies: dict[str, str] = {}  # study uid -> backend, for this association
        self.rx = self.fwd = self.failed = self.cache_hits = 0
        self.bytes_relayed = 0  # data set bytes sent to backends (telemetry's MB/s)
        self.busy = False
        self.established = False
        self.rq: negotiation.AssociateRequest | None = None
        self.contexts: dict[int, PresentationContext] = {}
        self.peer: ModalityPeer | None = None  # once the association is accepted
        self.ended = asyncio.get_running_loop().create_future()
        self.operations = Operations(self)
        self.task: asyncio.Task[None] | None = None  # set by the relay

    # -- the whole life -----------------------------------------------------------------
    async def run(self, deadline: float) -> None:
        outcome = "aborted"
        try:
            if not await self._negotiate(deadline):
                return
            outcome = await self._serve()
        except PeerAborted as exc:
            logger.info("pool=%s calling_ae=%s source_ip=%s aborted the association: %s",
                        self.pool_id, self.calling_ae, self.source_ip, exc)
        except ConnectionClosed as exc:
            if self.established:
                logger.info("pool=%s calling_ae=%s source_ip=%s connection ended without release: %s",
                            self.pool_id, self.calling_ae, self.source_ip, exc)
        except TimedOut as exc:
            logger.warning("pool=%s calling_ae=%s source_ip=%s: %s; aborting the association",
                           self.pool_id, self.calling_ae, self.source_ip, exc)
            self._abort_inbound(pdu.REASON_NOT_SPECIFIED)
        except ProtocolError as exc:
            logger.error("pool=%s calling_ae=%s source_ip=%s broke the protocol: %s; aborting the association",
                         self.pool_id, self.calling_ae or "?", self.source_ip, exc)
            self._abort_inbound(exc.reason)
        except PeerReleaseReply:  # PS3.8 AA-8: a reply to a release nobody asked for
            logger.error("pool=%s calling_ae=%s source_ip=%s broke the protocol: A-RELEASE-RP without an "
                         "A-RELEASE-RQ; aborting the association", self.pool_id, self.calling_ae or "?", self.source_ip)
            self._abort_inbound(pdu.REASON_UNEXPECTED_PDU)
        except asyncio.CancelledError:
            # runproxy is stopping (see Relay.stop): an idle association's backends are
            # released cleanly; one still mid-operation past the grace period is aborted.
            if not self.busy:
                await self._release_links()
            self._abort_inbound(pdu.REASON_NOT_SPECIFIED)
        except Exception:  # a bug must cost one association, never the worker
            logger.exception("pool=%s calling_ae=%s source_ip=%s: unexpected error; aborting the association",
                             self.pool_id, self.calling_ae, self.source_ip)
            self._abort_inbound(pdu.REASON_NOT_SPECIFIED)
        finally:
            for link in list(self.links.values()):
                if outcome != "released":
                    link.abort()
            self.links.clear()
            if not self.conn.lingering:
                self.conn.close()
            if self.established:
                self.relay.telemetry.association_closed()
                self.relay.telemetry.audit.association_ended(self)
                logger.info(
                    "association %s pool=%s calling_ae=%s source_ip=%s rx=%d fwd=%d failed=%d studies=%d "
                    "cache-hits=%d backends=%d",
                    outcome, self.pool_id, self.calling_ae, self.source_ip, self.rx, self.fwd, self.failed,
                    len(self.studies), self.cache_hits, len(set(self.studies.values())),
                )
            if not self.ended.done():
                self.ended.set_result(None)

    def _abort_inbound(self, reason: int) -> None:
        if self.conn.is_open:
            self.conn.send_and_close(pdu.abort(reason=reason), linger=ABORT_LINGER_SECONDS)

    # -- association establishment ------------------------------------------------------
    async def _negotiate(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        if self.listener.tls is not None:
            await self._start_tls(deadline)
        first = await self.conn.next_pdu(max(0.0, deadline - loop.time()))
        if first.type != pdu.A_ASSOCIATE_RQ:
            raise ProtocolError(f"PDU 0x{first.type:02X} before A-ASSOCIATE-RQ", pdu.REASON_UNEXPECTED_PDU)
        rq = negotiation.decode_associate_rq(first.raw)
        self.calling_ae = rq.calling_ae
        refusal = self._refusal(rq)
        if refusal is not None:
            kind, why, reason = refusal
            logger.warning("association rejected pool=%s calling_ae=%s called_ae=%s source_ip=%s reason=%s: %s",
                           self.pool_id, rq.calling_ae, rq.called_ae, self.source_ip, kind, why)
            self.relay.telemetry.association_rejected(kind, pool_id=self.pool_id, source_ip=self.source_ip,
                                                      calling_ae=rq.calling_ae, called_ae=rq.called_ae, detail=why)
            self.relay.telemetry.audit.rejected(self, kind, why, rq.calling_ae, rq.called_ae)
            self.conn.send_and_close(negotiation.reject(reason), linger=ABORT_LINGER_SECONDS)
            return False
        # The AC echoes the called AE title the modality used (PS3.8 9.3.3), ours or an accepted one.
        accepted = negotiation.accept(rq, ae_title=rq.called_ae, max_pdu=self.network.max_pdu_bytes,
                                      services=self.relay.services[self.pool_id],
                                      ranks=self.relay.syntax_ranks.get(self.pool_id))
        self.rq, self.contexts = rq, dict(accepted.contexts)
        self.called_ae = rq.called_ae
        self.called_backend = self.listener.backend_called(rq.called_ae)
        refused = sorted({str(cx.abstract_syntax) for cx in rq.contexts} -
                         {str(cx.abstract_syntax) for cx in accepted.contexts.values()})
        if refused:  # the modality may then give up with no more than "the peer closed the connection"
            logger.warning("pool=%s calling_ae=%s source_ip=%s: presentation contexts refused: %s (not passed by "
                           "this pool: switched off in Pools[%s].Services, or offered by no backend)", self.pool_id,
                           rq.calling_ae, self.source_ip, ", ".join(_sop_class_name(uid) for uid in refused),
                           self.pool_id)
            self.relay.telemetry.contexts_refused(pool_id=self.pool_id, source_ip=self.source_ip,
                                                  calling_ae=rq.calling_ae, called_ae=rq.called_ae,
                                                  sop_classes=[_sop_class_name(uid) for uid in refused])
        self.peer = ModalityPeer(self.conn, self.contexts, rq.max_pdu)
        # The relay counts this association among the established ones from here.
        self.relay.established(self)
        self.established = True
        self.relay.telemetry.association_opened()
        # Past negotiation, P-DATA may be as long as the max PDU SynthIQ announced.
        self.conn.framer.max_pdata_length = self.network.max_pdu_bytes
        self.conn.write(accepted.pdu)
        return True

    async def _start_tls(self, deadline: float) -> None:
        """TLS after the TCP accept (counted as pending from connect), under the same
        connect-to-AC deadline, so a client that never says hello holds nothing for long."""
        loop = asyncio.get_running_loop()
        assert self.conn.transport is not None and self.listener.tls is not None
        remaining = max(0.1, deadline - loop.time())
        try:
            transport = await loop.start_tls(self.conn.transport, self.conn, self.listener.tls, server_side=True,
                                             ssl_handshake_timeout=remaining)
        except (OSError, TimeoutError, ConnectionError) as exc:
            self._tls_failed(exc)
            raise ConnectionClosed(f"TLS handshake with {self.source_ip} failed: {exc or type(exc).__name__}") from None
        if transport is None:
            self._tls_failed(None)
            raise ConnectionClosed(f"TLS handshake with {self.source_ip} failed")
        self.conn.attach(transport)  # type: ignore[arg-type]

    def _tls_failed(self, exc: BaseException | None) -> None:
        """A failed handshake is logged (rate-limited: a scanner can make thousands) and counted
        by reason: plaintext DICOM on the TLS port, or any other failure."""
        text = f"{exc or 'connection closed'}"
        plaintext = any(sign in text for sign in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST",
                                                  "unknown protocol", "wrong version number"))
        kind = "tls-plaintext" if plaintext else "tls-handshake"
        self.relay.telemetry.association_rejected(kind, pool_id=self.pool_id, source_ip=self.source_ip,
                                                  detail=f"TLS handshake failed: {text}")
        self.relay.telemetry.audit.rejected(self, kind, text)
        self.relay.log_refusal(kind, f"pool={self.pool_id} source_ip={self.source_ip}: TLS handshake failed"
                                     f"{' (plaintext on the TLS port?)' if plaintext else ''}: {text} "
                                     "(repeats within a minute counted, not logged)")

    def _refusal(self, rq: negotiation.AssociateRequest) -> tuple[str, str, tuple[int, int, int]] | None:
        """Why this request is rejected: (the reason's metric label, the log text, the A-ASSOCIATE-RJ
        result/source/reason), or None to accept it."""
        if rq.protocol_version != 1:
            return "protocol-version", f"protocol version {rq.protocol_version}", negotiation.REJECT_PROTOCOL_VERSION
        if rq.application_context != negotiation.APPLICATION_CONTEXT:
            return ("application-context", f"application context {rq.application_context}",
                    negotiation.REJECT_APPLICATION_CONTEXT)
        if not self.listener.answers_to(rq.called_ae):
            also = (f" nor in Pools[{self.pool_id}].AcceptedCalledAeTitles"
                    if self.listener.accepted_called_ae_titles else "")
            return ("called-ae", f"called AE title {rq.called_ae!r} is not {self.listener.ae_title!r}{also}",
                    negotiation.REJECT_CALLED_AE)
        allowed = self.listener.allowed_calling_ae_titles
        if allowed and rq.calling_ae not in allowed:
            return ("calling-ae", f"calling AE title {rq.calling_ae!r} not in the allow-list",
                    negotiation.REJECT_CALLING_AE)
        if self.relay.stopping:
            return "stopping", "runproxy is stopping", negotiation.REJECT_NO_REASON
        if not self.relay.has_room():
            return ("association-limit",
                    f"{self.network.max_associations} associations already open (Network.MaxAssociations)",
                    negotiation.REJECT_LIMIT)
        if not self.relay.address_has_room(self.source_ip):
            return ("address-limit", f"{self.relay.max_per_address} associations from {self.source_ip} already "
                    "open (Network.MaxAssociationsPerAddress)", negotiation.REJECT_LIMIT)
        return None

    # -- serving ------------------------------------------------------------------------
    async def _serve(self) -> str:
        assert self.peer is not None
        while True:
            # Nothing in flight: the idle limit; a storage commitment report still to come:
            # the network timeout (the association is waiting, not idle).
            waiting = self.operations.reports_awaited > 0
            limit = self.network.network_timeout_seconds if waiting else self.network.idle_timeout_seconds
            try:
                context_id, command = await self.peer.stream.read_command(limit)
            except PeerReleaseRequest:
                await self._release()
                return "released"
            except TimedOut:
                if waiting or self.peer.stream.has_input:
                    raise
                logger.info("pool=%s calling_ae=%s source_ip=%s: nothing for %.0fs (Network.IdleTimeoutSeconds); "
                            "closing the association", self.pool_id, self.calling_ae, self.source_ip, limit)
                self.relay.telemetry.association_rejected("idle")
                await self._release_links()
                self._abort_inbound(pdu.REASON_NOT_SPECIFIED)
                return "closed idle"
            self.busy = True
            try:
                await self._dispatch(context_id, command)
            finally:
                self.busy = False
            self.relay.operation_done()

    async def _dispatch(self, context_id: int, command: commands.Command) -> None:
        field = command.field
        if field == commands.C_ECHO_RQ:
            await self.answer(context_id, commands.response(command, status.SUCCESS))  # Success
            if command.has_data_set:
                await self._drop_data_set(context_id)
            return
        if field == commands.C_STORE_RQ and command.has_data_set:
            await self._store(context_id, command)
            return
        if field in QUERY_RETRIEVE and command.has_data_set:
            await self.operations.query_retrieve(context_id, command)
            return
        if field == commands.N_ACTION_RQ and command.has_data_set:
            await self.operations.commitments.action(context_id, command)
            return
        if field == commands.N_EVENT_REPORT_RQ and command.has_data_set:
            await self.operations.commitments.event_report(context_id, command)
            return
        if not command.is_request:
            if not await self.operations.answer_from_modality(context_id, command):
                logger.warning("pool=%s calling_ae=%s: %s answering nothing in flight: dropped", self.pool_id,
                               self.calling_ae, command.name)
                if command.has_data_set:
                    await self._drop_data_set(context_id)
            return
        if field == commands.C_CANCEL_RQ:
            return  # nothing in flight to cancel (it has no response)
        logger.warning("pool=%s calling_ae=%s: %s not supported here; answered 0x0211",
                       self.pool_id, self.calling_ae, command.name)
        if command.has_data_set:
            await self._drop_data_set(context_id)
        await self.answer(context_id, commands.response(command, status.UNRECOGNIZED_OPERATION))

    async def answer(self, context_id: int, raw: bytes | memoryview) -> None:
        """A response of SynthIQ's (or a backend's, already whole) to the modality."""
        assert self.peer is not None
        await self.peer.answer(context_id, raw)

    async def _drop_data_set(self, context_id: int) -> None:
        assert self.peer is not None
        await self.peer.stream.skip_data_set(context_id, self.network.network_timeout_seconds)

    # -- C-STORE ------------------------------------------------------------------------
    async def _store(self, context_id: int, command: commands.Command) -> None:
        started = time.perf_counter()
        bytes_before = self.bytes_relayed
        self.rx += 1
        sop_uid = command.sop_instance_uid
        study_uid = ""
        try:
            held, last, header = await self._hold_until_study_uid(context_id, sop_uid)
            study_uid = header.study_uid
            self._check_uids(header, sop_uid, held, last)
            try:
                backend_id = await self._route(header, sop_uid)
                link = await self._link(backend_id, context_id)
            except OperationFailed:
                if not last:  # answer only once the whole request has been read
                    await self._drop_data_set(context_id)
                raise
            code, answer = await self._forward(link, context_id, command, held, last)
        except OperationFailed as failure:
            self.failed += 1
            # The verdict, with every id an operator searches by (the lines above say why).
            logger.error("C-STORE failed pool=%s calling_ae=%s source_ip=%s study=%s sop=%s backend=%s: 0x%04X %s",
                         self.pool_id, self.calling_ae, self.source_ip, _logged_uid(study_uid),
                         _logged_uid(sop_uid), failure.backend or "-", failure.status, failure.comment)
            self.relay.telemetry.forward_failed(failure.backend, failure.status)
            self.relay.telemetry.store_failed(
                pool_id=self.pool_id, calling_ae=self.calling_ae, source_ip=self.source_ip,
                study_uid=study_uid, sop_instance_uid=sop_uid,
                backend_id=failure.backend, status=failure.status, comment=failure.comment, by_backend=False)
            if failure.drop:  # answer only once the whole request has been read
                await self._drop_data_set(context_id)
            offending = failure.offending or (
                [0x0020000D] if failure.status in (status.CANNOT_UNDERSTAND, status.UID_BEYOND_HOLD) else None)
            await self.answer(context_id, commands.response(command, failure.status, comment=failure.comment,
                                                       offending=offending))
            return
        if status.is_success(code):
            self.fwd += 1
            self.relay.placement.note_instance(pool_id=self.pool_id, sop_instance_uid=sop_uid,
                                               backend_id=backend_id, study_uid=header.study_uid)
        else:
            self.failed += 1
            logger.warning("C-STORE not stored pool=%s calling_ae=%s source_ip=%s study=%s sop=%s backend=%s: backend "
                           "answered 0x%04X %s", self.pool_id, self.calling_ae, self.source_ip,
                           study_uid, sop_uid, backend_id, code, answer.text(commands.ERROR_COMMENT))
            self.relay.telemetry.store_failed(
                pool_id=self.pool_id, calling_ae=self.calling_ae, source_ip=self.source_ip,
                study_uid=study_uid, sop_instance_uid=sop_uid, backend_id=backend_id, status=code,
                comment=answer.text(commands.ERROR_COMMENT), by_backend=True)
        self.relay.telemetry.forwarded(backend_id, code, time.perf_counter() - started,
                                       nbytes=self.bytes_relayed - bytes_before)
        self.relay.telemetry.audit.stored(self, header, command.sop_class_uid, backend_id, code)
        await self.answer(context_id, answer.raw)

    def _check_uids(self, header: Header, sop_uid: str, held: list[memoryview], last: bool) -> None:
        """The UIDs this C-STORE is routed and recorded by must be UIDs: anything else is
        refused with 0xC000 before a byte reaches a backend, the database or the journal.
        Raises OperationFailed (with the rest of the data set still to be dropped if not ``last``)."""
        for name, reason, tag, value in (("Study Instance UID", "study-uid", 0x0020000D, header.study_uid),
                                         ("SOP Instance UID", "sop-instance-uid", commands.AFFECTED_SOP_INSTANCE_UID,
                                          sop_uid)):
            problem = uids.uid_problem(value)
            if problem is None:
                continue
            held.clear()
            self.relay.telemetry.invalid_input(service="C-STORE", reason=reason)
            logger.error("pool=%s calling_ae=%s source_ip=%s sop=%s: C-STORE refused with 0xC000: %s %s is %s",
                         self.pool_id, uids.shown(self.calling_ae), self.source_ip, uids.shown(sop_uid), name,
                         uids.shown(value), problem)
            raise OperationFailed(status.CANNOT_UNDERSTAND, uids.comment(name, problem), offending=[tag], drop=not last)

    async def _hold_until_study_uid(self, context_id: int, sop_uid: str) -> tuple[list[memoryview], bool, Header]:
        """Read data set fragments until the Study Instance UID is known; they are held
        (bounded by ``hold_bytes``) to be sent once the study is routed."""
        assert self.peer is not None
        scanner = HeaderScanner(self.transfer_syntax(context_id))
        held: list[memoryview] = []
        size = 0
        while True:
            piece = await self.peer.stream.next_piece(context_id, self.network.network_timeout_seconds)
            held.append(piece.data)
            size += len(piece.data)
            try:
                header = scanner.feed(piece.data, last=piece.last)
            except HeaderError as exc:
                code, comment = status.CANNOT_UNDERSTAND, str(exc)
            else:
                if header is not None:
                    return held, piece.last, header
                if size < self.network.header_hold_bytes:
                    continue
                code, comment = (status.UID_BEYOND_HOLD,
                                 f"Study Instance UID not in the first {self.network.header_hold_bytes // 1024} KiB")
            held.clear()
            if not piece.last:
                await self._drop_data_set(context_id)
            logger.error("pool=%s calling_ae=%s source_ip=%s sop=%s: C-STORE refused with 0x%04X: %s",
                         self.pool_id, self.calling_ae, self.source_ip, uids.shown(sop_uid), code, comment)
            raise OperationFailed(code, comment)

    def transfer_syntax(self, context_id: int) -> str:
        return str(self.contexts[context_id].transfer_syntax[0])

    async def _route(self, header: Header, sop_uid: str) -> str:
        suid = header.study_uid
        backend_id = self.studies.get(suid)
        if backend_id is not None:
            self.cache_hits += 1
            self.relay.telemetry.routed(ASSOCIATION_CACHED)
        else:
            route = await self.relay.route(self.pool_id, suid)
            if route.backend_id is None:
                logger.error("pool=%s calling_ae=%s source_ip=%s study=%s sop=%s: no enabled backend can take it",
                             self.pool_id, self.calling_ae, self.source_ip, suid, sop_uid)
                raise OperationFailed(status.OUT_OF_RESOURCES, f"pool {self.pool_id}: no backend available")
            backend_id = route.backend_id
            self.studies[suid] = backend_id
            if route.cache_hit:
                self.cache_hits += 1
            self.relay.telemetry.decided(pool_id=self.pool_id, study_uid=suid, backend_id=backend_id,
                                     reason=route.reason, calling_ae=self.calling_ae, source_ip=self.source_ip,
                                     modality=header.modality)
            patient = f" patient_id={header.patient_id}" if self.relay.log_patient_id else ""
            logger.info(
                "route pool=%s calling_ae=%s source_ip=%s study=%s sop=%s modality=%s%s backend=%s reason=%s",
                self.pool_id, self.calling_ae, self.source_ip, suid, sop_uid, header.modality, patient,
                backend_id, route.reason,
            )
        self.relay.placement.touch(self.pool_id, suid)
        return backend_id

    async def _hold_for(self, backend_id: str, first: OutboundUnavailable) -> BackendLink:
        """The study's backend cannot be reached: retry it for up to
        Network.BoundBackendHoldSeconds before failing the C-STORE. Meanwhile nothing more
        is read from the modality (its socket fills, TCP holds it back), so holding costs
        no memory; the number of associations held per pool is bounded."""
        loop = asyncio.get_running_loop()
        network, relay = self.network, self.relay
        deadline = loop.time() + network.bound_backend_hold_seconds
        if network.bound_backend_hold_seconds <= 0 or relay.held[self.pool_id] >= network.max_held_associations:
            raise OperationFailed(first.status, first.comment, backend_id) from None
        relay.held[self.pool_id] += 1
        relay.telemetry.held()
        logger.warning("pool=%s calling_ae=%s source_ip=%s: %s; holding the association up to %.0fs for it",
                       self.pool_id, self.calling_ae, self.source_ip, first.comment,
                       network.bound_backend_hold_seconds)
        last = first
        try:
            while loop.time() < deadline:
                await asyncio.sleep(min(HOLD_RETRY_SECONDS, max(0.0, deadline - loop.time())))
                try:
                    link = await self.link_to(backend_id, log=False)
                except OutboundUnavailable as exc:
                    last = exc
                    continue
                logger.info("pool=%s calling_ae=%s: backend %s reachable again after %.1fs; relaying",
                            self.pool_id, self.calling_ae, backend_id,
                            network.bound_backend_hold_seconds - (deadline - loop.time()))
                return link
        finally:
            relay.held[self.pool_id] -= 1
        logger.error("pool=%s calling_ae=%s source_ip=%s backend=%s: still unreachable after %.0fs held: %s; the "
                     "C-STORE fails with 0x%04X", self.pool_id, self.calling_ae, self.source_ip, backend_id,
                     network.bound_backend_hold_seconds, last.comment, last.status)
        raise OperationFailed(last.status, last.comment, backend_id)

    async def link_to(self, backend_id: str, *, log: bool = True) -> BackendLink:
        """This association's link to ``backend_id``, opened when needed. Raises OutboundUnavailable
        (logged unless ``log`` is false: a hold's retries log once, not at every try)."""
        link = self.links.get(backend_id)
        if link is None or not link.usable:
            self.links.pop(backend_id, None)
            try:
                link = await self.relay.open_link(self, backend_id)
            except OutboundUnavailable as exc:
                if log:
                    logger.error("pool=%s calling_ae=%s source_ip=%s backend=%s: %s", self.pool_id, self.calling_ae,
                                 self.source_ip, backend_id, exc.comment)
                raise
            link.on_request = lambda link: self.relay.spawn(self.operations.relay_unsolicited(link))
            self.links[backend_id] = link
        return link

    async def _link(self, backend_id: str, context_id: int) -> BackendLink:
        """As link_to, for a C-STORE, riding out a short backend outage. Raises OperationFailed."""
        try:
            link = await self.link_to(backend_id)
        except OutboundUnavailable as exc:
            link = await self._hold_for(backend_id, exc)
        if context_id not in link.accepted.contexts:
            comment = f"backend {backend_id} refused SOP class/syntax"
            logger.error("pool=%s calling_ae=%s: %s (%s in %s)", self.pool_id, self.calling_ae, comment,
                         self.contexts[context_id].abstract_syntax, self.transfer_syntax(context_id))
            raise OperationFailed(status.SOP_CLASS_NOT_SUPPORTED, comment, backend_id)
        return link

    async def _forward(self, link: BackendLink, context_id: int, command: commands.Command,
                       held: list[memoryview], last: bool) -> tuple[int, commands.Command]:
        assert self.peer is not None
        backend_id = link.backend.id
        self.relay.placement.note_sent(backend_id)
        link.claim()
        try:
            try:
                self.bytes_relayed += await relay_message(
                    self.peer.stream, link, context_id, command.raw, held, last=last,
                    timeout=self.network.network_timeout_seconds, drain_timeout=self.network.dimse_timeout_seconds)
                return await self._response(link, command)
            except LinkLost as exc:
                link.abort()
                self.links.pop(backend_id, None)
                logger.error("pool=%s calling_ae=%s sop=%s backend=%s: %s", self.pool_id, uids.shown(self.calling_ae),
                             command.sop_instance_uid, backend_id, exc)
                if self.peer.stream.data_set_unread:
                    await self._drop_data_set(context_id)
                if isinstance(exc, Violation):
                    self.relay.telemetry.backend_violation(backend_id)
                    raise OperationFailed(status.BACKEND_NO_RESPONSE, str(exc), backend_id) from None
                raise OperationFailed(status.BACKEND_NO_RESPONSE, f"backend {backend_id} aborted/timed out",
                              backend_id) from None
        except (PeerAborted, ConnectionClosed, ProtocolError, TimedOut):
            # The modality went away (or broke the protocol) mid-instance: the backend must
            # never complete a partial instance.
            link.abort()
            self.links.pop(backend_id, None)
            raise
        finally:
            if link.usable:
                link.unclaim(idle_seconds=self.network.outbound_idle_seconds, on_idle=self.link_idle)

    async def _response(self, link: BackendLink, command: commands.Command) -> tuple[int, commands.Command]:
        """The backend's C-STORE-RSP for ``command``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.network.dimse_timeout_seconds
        while True:
            try:
                rsp_context, rsp = await link.stream.read_command(max(0.0, deadline - loop.time()))
            except (PeerAborted, ConnectionClosed, TimedOut, ProtocolError, PeerReleaseRequest) as exc:
                raise LinkLost(f"no C-STORE response ({type(exc).__name__}: {exc})") from None
            if rsp.field == commands.C_STORE_RSP:
                mismatch = commands.response_mismatch(command, rsp)
                if mismatch:
                    raise Violation(f"backend {link.backend.id} {mismatch}")
                code = rsp.status
                if code is None:
                    raise LinkLost("C-STORE response without a Status")
                if rsp.has_data_set:
                    await link.stream.skip_data_set(rsp_context, self.network.dimse_timeout_seconds)
                return code, rsp
            logger.warning("backend %s sent %s while a C-STORE was in flight: ignored", link.backend.id, rsp.name)
            if rsp.has_data_set:
                await link.stream.skip_data_set(rsp_context, self.network.dimse_timeout_seconds)

    def link_idle(self, link: BackendLink) -> None:
        if self.links.get(link.backend.id) is link:
            del self.links[link.backend.id]
        self.relay.spawn(link.release(self.network.release_timeout_seconds))

    # -- release ------------------------------------------------------------------------
    async def _release_links(self) -> None:
        links, self.links = list(self.links.values()), {}
        if links:
            await asyncio.gather(*(link.release(self.network.release_timeout_seconds) for link in links))

    async def _release(self) -> None:
        """The modality asked to release: release the backends first (bounded), then answer."""
        await self._release_links()
        self.conn.write(pdu.release_rp())
        # The requestor closes the connection after our A-RELEASE-RP; wait a moment for it.
        try:
            await asyncio.wait_for(asyncio.shield(self.conn.lost), self.network.release_timeout_seconds)
        except TimeoutError:
            pass
