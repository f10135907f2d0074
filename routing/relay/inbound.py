"""One inbound association, from the modality's connect to its release or abort.

The coroutine ``InboundAssociation.run`` negotiates, then serves one DIMSE operation at
a time (no asynchronous operations window is granted): each request goes to its
service's handler (``routing.relay.handlers``), given the association's ``Context``; a
request no handler takes is answered 0x0211, a response goes back to the backend whose
request it answers. A release from the modality releases the backends first; any other
end of the association aborts them, so a backend never completes a partial instance.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext

from routing.dicom import commands, negotiation, pdu, status, uids
from routing.dicom.association import (
    Aborted,
    AssociateRequested,
    Association,
    PeerAborted,
    ReleaseRequested,
    Role,
)
from routing.dicom.pdu import ProtocolError
from routing.relay.connection import ConnectionClosed, PduConnection, TimedOut
from routing.relay.context import Context
from routing.relay.links import Links
from routing.relay.operations import Operations
from routing.relay.peer import ModalityPeer
from routing.relay.stream import peer_name

if TYPE_CHECKING:
    from routing.relay.server import PoolListener, Relay

logger = logging.getLogger("synthiq.routing")

# After an A-ABORT, how long the peer has to close the connection itself (PS3.8 ARTIM).
ABORT_LINGER_SECONDS = 2.0


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
        self.association = Association(Role.ACCEPTOR)  # the protocol state (routing.dicom.association)
        self.links = Links(open_link=lambda backend_id: relay.open_link(self, backend_id), network=self.network,
                           spawn=relay.spawn, where=f"pool={self.pool_id} source_ip={self.source_ip}")
        self.busy = False
        self.established = False
        self.rq: negotiation.AssociateRequest | None = None
        self.contexts: dict[int, PresentationContext] = {}
        self.context: Context | None = None  # what the handlers are given, once the association is accepted
        self.ended = asyncio.get_running_loop().create_future()
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
        except asyncio.CancelledError:
            # runproxy is stopping (see Relay.stop): an idle association's backends are
            # released cleanly; one still mid-operation past the grace period is aborted.
            if not self.busy:
                await self.links.release_all()
            self._abort_inbound(pdu.REASON_NOT_SPECIFIED)
        except Exception:  # a bug must cost one association, never the worker
            logger.exception("pool=%s calling_ae=%s source_ip=%s: unexpected error; aborting the association",
                             self.pool_id, self.calling_ae, self.source_ip)
            self._abort_inbound(pdu.REASON_NOT_SPECIFIED)
        finally:
            if outcome != "released":
                self.links.abort_all()
            if not self.conn.lingering:
                self.conn.close()
            if self.context is not None:
                tally = self.context.tally
                self.relay.telemetry.association_closed()
                self.relay.telemetry.audit.association_ended(self.context)
                logger.info(
                    "association %s pool=%s calling_ae=%s source_ip=%s rx=%d fwd=%d failed=%d studies=%d "
                    "cache-hits=%d backends=%d",
                    outcome, self.pool_id, self.calling_ae, self.source_ip, tally.rx, tally.fwd, tally.failed,
                    len(tally.studies), tally.cache_hits, len(set(tally.studies.values())),
                )
            if not self.ended.done():
                self.ended.set_result(None)

    def drop(self) -> None:
        """Close the connection at once (a newer connection needs its pending place)."""
        self.conn.abort_transport()

    def _abort_inbound(self, reason: int) -> None:
        if self.conn.is_open:
            self.conn.send_and_close(self.association.abort(reason=reason), linger=ABORT_LINGER_SECONDS)

    # -- association establishment ------------------------------------------------------
    async def _negotiate(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        first = self.association.receive(await self.conn.next_pdu(max(0.0, deadline - loop.time())))
        if isinstance(first, Aborted):
            raise PeerAborted(peer_name(self.conn.name), first.source, first.reason)
        if not isinstance(first, AssociateRequested):
            raise ProtocolError(getattr(first, "text", type(first).__name__), pdu.REASON_UNEXPECTED_PDU)
        rq = negotiation.decode_associate_rq(first.pdu.raw)
        self.calling_ae = rq.calling_ae
        refusal = self._refusal(rq)
        if refusal is not None:
            kind, why, reason = refusal
            logger.warning("association rejected pool=%s calling_ae=%s called_ae=%s source_ip=%s reason=%s: %s",
                           self.pool_id, rq.calling_ae, rq.called_ae, self.source_ip, kind, why)
            self.relay.telemetry.association_rejected(kind, pool_id=self.pool_id, source_ip=self.source_ip,
                                                      calling_ae=rq.calling_ae, called_ae=rq.called_ae, detail=why)
            self.relay.telemetry.audit.rejected(self, kind, why, rq.calling_ae, rq.called_ae)
            self.conn.send_and_close(self.association.reject(negotiation.reject(reason)), linger=ABORT_LINGER_SECONDS)
            return False
        # The AC echoes the called AE title the modality used (PS3.8 9.3.3), ours or an accepted one.
        offer = self.relay.offers[self.pool_id]
        accepted = negotiation.accept(rq, ae_title=rq.called_ae, max_pdu=self.relay.announced_max_pdu(self.pool_id),
                                      services=offer.services, ranks=offer.ranks)
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
        self.context = self._context(rq)
        # The relay counts this association among the established ones from here.
        self.relay.established(self)
        self.established = True
        self.relay.telemetry.association_opened()
        # Past negotiation, P-DATA may be as long as Network.MaxPduBytes: what SynthIQ announces
        # is at most that, and a modality that sends more than announced but within it is let through.
        self.conn.framer.max_pdata_length = self.network.max_pdu_bytes
        self.conn.write(self.association.accept(accepted.pdu))
        return True

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
    def _context(self, rq: negotiation.AssociateRequest) -> Context:
        """What the handlers are given (routing.relay.context), from the accepted association."""
        self.links.where = f"pool={self.pool_id} calling_ae={self.calling_ae} source_ip={self.source_ip}"
        peer = ModalityPeer(self.conn, self.contexts, rq.max_pdu, self.association)
        context = Context(peer=peer, links=self.links, relay=self.relay,
                          network=self.network, listener=self.listener, contexts=self.contexts,
                          calling_ae=self.calling_ae, called_ae=self.called_ae, source_ip=self.source_ip,
                          called_backend=self.called_backend)
        context.operations = operations = Operations(context)
        self.links.on_request = lambda link: self.relay.spawn(operations.relay_unsolicited(link))
        return context

    async def _serve(self) -> str:
        context = self.context
        assert context is not None
        while True:
            # Nothing in flight: the idle limit; a storage commitment report still to come:
            # the network timeout (the association is waiting, not idle).
            waiting = context.operations.reports_awaited > 0
            limit = self.network.network_timeout_seconds if waiting else self.network.idle_timeout_seconds
            try:
                message = await context.peer.stream.next_message(limit)
            except TimedOut:
                if waiting or context.peer.stream.has_input:
                    raise
                logger.info("pool=%s calling_ae=%s source_ip=%s: nothing for %.0fs (Network.IdleTimeoutSeconds); "
                            "closing the association", self.pool_id, self.calling_ae, self.source_ip, limit)
                self.relay.telemetry.association_rejected("idle")
                await self.links.release_all()
                self._abort_inbound(pdu.REASON_NOT_SPECIFIED)
                return "closed idle"
            if isinstance(message, ReleaseRequested):
                await self._release()
                return "released"
            context_id, command = message
            self.busy = True
            try:
                await self._dispatch(context, context_id, command)
            finally:
                self.busy = False
            self.relay.operation_done()

    async def _dispatch(self, context: Context, context_id: int, command: commands.Command) -> None:
        """The service's handler (routing.relay.handlers), or what a request or response
        that is no service's gets."""
        service = self.relay.handlers.get(command.field)
        if service is not None and (command.has_data_set or not service.needs_data_set):
            await service.handle(context, context_id, command)
            return
        if not command.is_request:
            if not await context.operations.answer_from_modality(context_id, command):
                logger.warning("pool=%s calling_ae=%s: %s answering nothing in flight: dropped", self.pool_id,
                               self.calling_ae, command.name)
                if command.has_data_set:
                    await context.drop_data_set(context_id)
            return
        if command.field == commands.C_CANCEL_RQ:
            return  # nothing in flight to cancel (it has no response)
        logger.warning("pool=%s calling_ae=%s: %s not supported here; answered 0x0211",
                       self.pool_id, self.calling_ae, command.name)
        if command.has_data_set:
            await context.drop_data_set(context_id)
        await context.answer(context_id, commands.response(command, status.UNRECOGNIZED_OPERATION))

    # -- release ------------------------------------------------------------------------
    async def _release(self) -> None:
        """The modality asked to release: release the backends first (bounded), then answer."""
        await self.links.release_all()
        self.conn.write(self.association.release_reply())
        # The requestor closes the connection after our A-RELEASE-RP; wait a moment for it.
        try:
            await asyncio.wait_for(asyncio.shield(self.conn.lost), self.network.release_timeout_seconds)
        except TimeoutError:
            pass
