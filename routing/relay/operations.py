"""One operation relayed to one backend and everything back; requests that come the other way.

``Operations.one`` sends a request (its data set already read) to one backend and relays
every response, and every request the backend makes meanwhile (a C-GET's C-STORE
sub-operations), to the modality until the final response; the modality's answers and a
C-CANCEL go back. A backend's request on an idle association (an N-EVENT-REPORT after its
N-ACTION-RSP) is relayed to the modality, and the answer back later, by Message ID.
Responses are relayed as the bytes the backend sent (Message IDs are the modality's own,
since requests go out unchanged). The handlers (``routing.relay.handlers``) use it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from routing.dicom import commands, pdu, status
from routing.dicom.pdu import ProtocolError
from routing.relay.commitment import Commitments
from routing.relay.connection import first_ready
from routing.relay.failures import FailureCodes, LinkLost, OperationFailed, Violation
from routing.relay.outbound import BackendLink, OutboundUnavailable
from routing.relay.peer import relay_message

if TYPE_CHECKING:
    from routing.relay.context import Context

logger = logging.getLogger("synthiq.routing")

class Operations:
    """One inbound association's requests relayed to one backend, and its backends' requests (the module docstring)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.network = ctx.network
        # Requests a backend sent on its association (C-GET sub-operations, an
        # N-EVENT-REPORT): Message ID -> the link the modality's answer goes back to.
        self.reverse: dict[int, BackendLink] = {}
        # SynthIQ's own requests to the modality (a local N-EVENT-REPORT): answers dropped.
        self.own: set[int] = set()
        # Storage commitments accepted by a backend whose report has not reached the
        # modality yet: while there are any, the association is waiting, not idle.
        self.reports_awaited = 0
        self.commitments = Commitments(self)

    def record_failure(self, service: str, code: int, *, study: str = "", backends: list[str] | None = None,
                       comment: str = "", by_backend: bool) -> None:
        """An operation that ended in failure, for the operator's list of recent failures
        (a cancel, a success or a warning is none)."""
        if status.is_success(code) or code == status.CANCEL:
            return
        ctx = self.ctx
        ctx.relay.telemetry.store_failed(
            service=service, pool_id=ctx.pool_id, calling_ae=ctx.calling_ae, source_ip=ctx.source_ip,
            study_uid=study, sop_instance_uid="", backend_id=",".join(backends or []), status=code, comment=comment,
            by_backend=by_backend)

    async def answer_from_modality(self, context_id: int, command: commands.Command) -> bool:
        """A response from the modality to a request that came from a backend (or from
        SynthIQ): relay it (or drop it). False if it answers nothing known."""
        ctx = self.ctx
        message_id = command.responded_to
        if message_id in self.own:
            self.own.discard(message_id)
            if command.has_data_set:
                await ctx.drop_data_set(context_id)
            return True
        link = self.reverse.pop(message_id, None) if message_id is not None else None
        if link is None:
            return False
        if link.usable:
            try:
                await relay_message(ctx.peer.stream, link, context_id, command.raw, [], last=not command.has_data_set,
                                    timeout=self.network.dimse_timeout_seconds,
                                    drain_timeout=self.network.dimse_timeout_seconds)
            except LinkLost as exc:  # that backend's operation is lost; the modality's goes on
                logger.warning("pool=%s: an answer to backend %s could not be relayed: %s", ctx.pool_id,
                               link.backend.id, exc)
                link.abort()
                if ctx.peer.stream.data_set_unread:
                    await ctx.drop_data_set(context_id)
        elif command.has_data_set:
            await ctx.drop_data_set(context_id)
        return True

    async def relay_unsolicited(self, link: BackendLink) -> None:
        """A backend's request on an association with no operation in flight (an
        N-EVENT-REPORT after its N-ACTION-RSP): to the modality, its answer back later."""
        ctx = self.ctx
        link.claim()
        try:
            context_id, request = await link.stream.read_command(self.network.dimse_timeout_seconds)
            await self._to_modality(link, context_id, request)
        except Exception as exc:  # the backend or the modality went away: end that link
            logger.warning("pool=%s: a request from backend %s could not be relayed: %s", ctx.pool_id,
                           link.backend.id, exc)
            link.abort()
        finally:
            ctx.links.unclaim(link)

    # -- one backend --------------------------------------------------------------------
    async def forward(self, backend_id: str, context_id: int, command: commands.Command, data: bytes,
                      codes: FailureCodes) -> int:
        """Relay a request (its data set already read) to one backend and everything back
        until its final response; a failure of SynthIQ's own is answered here. The status."""
        try:
            return await self.one(backend_id, context_id, command, data, codes)
        except OperationFailed as failure:
            await self.ctx.answer(context_id, commands.response(command, failure.status, comment=failure.comment))
            return failure.status

    async def one(self, backend_id: str, context_id: int, command: commands.Command, data: bytes,
                  codes: FailureCodes) -> int:
        """Send the request to one backend and relay everything until its final response."""
        link = await self.link(backend_id, context_id, command, codes)
        link.claim()
        try:
            return await self._exchange(link, context_id, command, data)
        except LinkLost as exc:
            link.abort()
            self.ctx.links.drop(link)
            if isinstance(exc, Violation):
                self.ctx.relay.telemetry.backend_violation(backend_id)
                raise OperationFailed(codes.lost, str(exc)) from exc
            raise OperationFailed(codes.lost, f"backend {backend_id} aborted/timed out") from exc
        finally:
            self.ctx.links.unclaim(link)

    async def _exchange(self, link: BackendLink, context_id: int, command: commands.Command, data: bytes) -> int:
        ctx = self.ctx
        link.send_message(context_id, command.raw, [data])
        timeout = self.network.dimse_timeout_seconds
        while True:
            try:
                await first_ready([link.conn, ctx.peer.conn], timeout, f"from backend {link.backend.id}")
                if link.stream.has_input:
                    reply_context, reply = await link.stream.read_command(timeout)
                    if not reply.is_request:
                        mismatch = commands.response_mismatch(command, reply)
                        if mismatch:
                            raise Violation(f"backend {link.backend.id} {mismatch}")
                        await self._to_modality(link, reply_context, reply)
                        if reply.status not in status.PENDING:
                            return reply.status if reply.status is not None else status.PROCESSING_FAILURE
                    else:
                        await self._to_modality(link, reply_context, reply)
                    continue
            except (ConnectionError, TimeoutError, ProtocolError) as exc:
                raise LinkLost(f"{type(exc).__name__}: {exc}") from exc
            await self.from_modality(context_id, command, [link])

    async def _to_modality(self, link: BackendLink, context_id: int, message: commands.Command) -> None:
        """Relay a message from a backend to the modality (a request is remembered, so the
        modality's answer finds its way back)."""
        ctx = self.ctx
        if message.is_request and message.message_id is not None:
            self.reverse[message.message_id] = link
        if message.field == commands.N_EVENT_REPORT_RQ:
            self.reports_awaited = max(0, self.reports_awaited - 1)
        async with ctx.peer.write_lock:
            await relay_message(link.stream, ctx.peer, context_id, message.raw, [], last=not message.has_data_set,
                                timeout=self.network.dimse_timeout_seconds,
                                drain_timeout=self.network.dimse_timeout_seconds)

    async def from_modality(self, context_id: int, command: commands.Command, links: list[BackendLink]) -> bool:
        """A message from the modality while ``command`` is in flight: a C-CANCEL (passed to
        ``links``; True), or an answer to a backend's request. Anything else breaks the
        one-operation-at-a-time rule."""
        ctx = self.ctx
        message_context, message = await ctx.peer.stream.read_command(self.network.network_timeout_seconds)
        if message.field == commands.C_CANCEL_RQ and message.responded_to == command.message_id:
            logger.info("%s pool=%s calling_ae=%s: C-CANCEL passed to %s", command.name, ctx.pool_id,
                        ctx.calling_ae, ",".join(link.backend.id for link in links) or "no backend")
            for link in links:
                if link.usable:
                    link.send_message(message_context, message.raw)
            return True
        if not message.is_request and await self.answer_from_modality(message_context, message):
            return False
        raise ProtocolError(f"{message.name} while {command.name} (message {command.message_id}) is in flight: "
                            "no asynchronous operations were negotiated", pdu.REASON_UNEXPECTED_PDU)

    # -- helpers ------------------------------------------------------------------------
    async def link(self, backend_id: str, context_id: int, command: commands.Command,
                   codes: FailureCodes) -> BackendLink:
        try:
            link = await self.ctx.links.to(backend_id)
        except OutboundUnavailable as exc:
            raise OperationFailed(codes.unavailable, exc.comment) from None
        if context_id not in link.accepted.contexts:
            raise OperationFailed(codes.unavailable,
                                  f"backend {backend_id} does not offer {command.name} here")
        return link
