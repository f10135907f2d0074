"""An association from SynthIQ to a backend, opened on behalf of one inbound association.

``BackendLink.open`` connects (TLS when the backend has it), sends the mirrored
A-ASSOCIATE-RQ and reads the answer; anything short of an A-ASSOCIATE-AC becomes
``OutboundUnavailable`` with the status the modality will get (0xA701) and a comment
naming the backend. A link that sits idle is released before common PACS idle timeouts
(Orthanc drops idle associations after 30 s) and reopened on demand; a release or
abort the backend starts itself is answered at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from routing.dicom import negotiation, pdu, status
from routing.dicom.client import Peer as PeerAddress
from routing.dicom.pdu import ProtocolError
from routing.relay.connection import ConnectionClosed, PduConnection, TimedOut
from routing.relay.peer import Peer
from routing.relay.stream import PeerAborted, PeerReleaseReply, PeerReleaseRequest

logger = logging.getLogger("synthiq.relay")

# What a backend may send us before the association is up (its A-ASSOCIATE-AC is small).
HANDSHAKE_PDU_LIMIT = 256 * 1024


BackendAddress = PeerAddress  # a backend as the relay and SynthIQ's own clients address it


class OutboundUnavailable(Exception):
    def __init__(self, code: int, comment: str):
        super().__init__(comment)
        self.status, self.comment = code, comment


class BackendLink(Peer):
    def __init__(self, backend: BackendAddress, conn: PduConnection, accepted: negotiation.BackendAccept):
        super().__init__(conn, accepted.contexts, accepted.max_pdu or pdu.UNLIMITED_PDU_CAP)
        self.backend = backend
        self.accepted = accepted
        self._idle_timer: asyncio.TimerHandle | None = None
        # Called (with this link, already claimed) when the backend sends a request of its
        # own with no operation in flight: an N-EVENT-REPORT after an N-ACTION-RSP.
        self.on_request: Callable[[BackendLink], object] | None = None
        conn.idle_handler = self._while_idle

    @classmethod
    async def open(cls, backend: BackendAddress, request: bytes, *, connect_timeout: float, acse_timeout: float,
                   max_pdu: int, tls: ssl.SSLContext | None) -> BackendLink:
        loop = asyncio.get_running_loop()
        name = f"backend {backend.id}"
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: PduConnection(name=name, max_length=HANDSHAKE_PDU_LIMIT, max_pdata_length=max_pdu),
                    backend.host, backend.port, ssl=tls, server_hostname=backend.host if tls else None),
                connect_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE,
                                      f"backend {backend.id} unreachable ({why})") from None
        conn.claimed = True
        conn.write(request)
        try:
            answer = await conn.next_pdu(acse_timeout)
        except (ConnectionClosed, TimedOut, ProtocolError) as exc:
            conn.abort_transport()
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE,
                                      f"backend {backend.id} did not answer the association ({exc})") from None
        if answer.type == pdu.A_ASSOCIATE_RJ:
            conn.close()
            why = negotiation.rejection_text(answer.raw)
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE,
                                      f"backend {backend.id} rejected the association ({why})")
        if answer.type != pdu.A_ASSOCIATE_AC:
            conn.abort_transport()
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE,
                                      f"backend {backend.id} answered the association with PDU 0x{answer.type:02X}")
        try:
            accepted = negotiation.decode_associate_ac(answer.raw)
        except ProtocolError as exc:
            conn.write(pdu.abort())
            conn.close()
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE, f"backend {backend.id}: {exc}") from None
        link = cls(backend, conn, accepted)
        conn.claimed = False
        return link

    # -- state ---------------------------------------------------------------------------
    def claim(self) -> None:
        self.conn.claimed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def unclaim(self, *, idle_seconds: float, on_idle: Callable[[BackendLink], None]) -> None:
        """Hand the link back; ``on_idle`` is called if it stays unused for ``idle_seconds``."""
        self.conn.claimed = False
        if self.conn.ready:
            self._while_idle(self.conn)
        if self.usable:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(idle_seconds, self._idle, on_idle)

    def _idle(self, on_idle: Callable[[BackendLink], None]) -> None:
        self._idle_timer = None
        if not self.conn.claimed and self.usable:
            on_idle(self)

    def _while_idle(self, conn: PduConnection) -> None:
        """PDUs from the backend while nobody waits for one: its own release or abort, or a
        request of its own (handed to ``on_request``, which reads it from the link)."""
        while conn.ready:
            if conn.ready[0].type == pdu.P_DATA_TF and self.on_request is not None and self.usable:
                self.claim()
                self.on_request(self)
                return
            got = conn.pop()
            assert got is not None
            if got.type == pdu.A_RELEASE_RQ_TYPE:
                logger.info("backend %s released an idle association itself", self.backend.id)
                conn.write(pdu.release_rp())
                self.closing = True
                conn.close()
            elif got.type == pdu.A_ABORT:
                logger.info("backend %s aborted an idle association", self.backend.id)
                self.closing = True
                conn.close()
            else:
                logger.warning("backend %s sent PDU 0x%02X with no operation in flight: aborting the association",
                               self.backend.id, got.type)
                self.abort(reason=pdu.REASON_UNEXPECTED_PDU)

    # -- ending -------------------------------------------------------------------------
    def abort(self, *, reason: int | None = None) -> None:
        """A-ABORT (as service user on the modality's behalf, or as provider with a reason)."""
        self.closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.conn.is_open:
            if reason is None:
                self.conn.write(pdu.abort(source=pdu.ABORT_SOURCE_USER))
            else:
                self.conn.write(pdu.abort(reason=reason))
            self.conn.close()

    async def release(self, timeout: float) -> bool:
        """A-RELEASE, bounded: a backend that does not answer in time is aborted.
        Returns True when it released cleanly."""
        self.claim()
        self.closing = True
        if not self.conn.is_open:
            return False
        self.conn.write(pdu.release_rq())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                try:
                    await self.stream.next_pdu(max(0.0, deadline - loop.time()))
                    continue  # a late response or event on its way out: not ours to relay any more
                except PeerReleaseRequest:
                    self.conn.write(pdu.release_rp())  # release collision: the requestor answers first
                except PeerReleaseReply:
                    self.conn.close()
                    return True
        except PeerAborted:
            self.conn.close()
            return False
        except TimedOut:
            logger.warning("backend %s did not answer A-RELEASE within %.0fs: aborting", self.backend.id, timeout)
            self.abort()
            return False
        except (ConnectionClosed, ProtocolError):
            self.conn.close()
            return False
