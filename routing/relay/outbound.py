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
from routing.dicom.association import (
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    Association,
    DataReceived,
    ReleaseReplied,
    ReleaseRequested,
    Role,
    Violation,
)
from routing.dicom.pdu import ProtocolError
from routing.dicom.scu import Peer as PeerAddress
from routing.relay.connection import ConnectionClosed, PduConnection, TimedOut
from routing.relay.peer import Peer

logger = logging.getLogger("synthiq.relay")

# What a backend may send us before the association is up (its A-ASSOCIATE-AC is small).
HANDSHAKE_PDU_LIMIT = 256 * 1024


BackendAddress = PeerAddress  # a backend as the relay and SynthIQ's own clients address it


class OutboundUnavailable(Exception):
    def __init__(self, code: int, comment: str):
        super().__init__(comment)
        self.status, self.comment = code, comment


class BackendLink(Peer):
    def __init__(self, backend: BackendAddress, conn: PduConnection, accepted: negotiation.BackendAccept,
                 association: Association):
        super().__init__(conn, accepted.contexts, accepted.max_pdu or pdu.UNLIMITED_PDU_CAP, association)
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
        association = Association(Role.REQUESTOR)
        conn.write(association.request(request))
        try:
            answer = association.receive(await conn.next_pdu(acse_timeout))
        except (ConnectionClosed, TimedOut, ProtocolError) as exc:
            conn.abort_transport()
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE,
                                      f"backend {backend.id} did not answer the association ({exc})") from None
        if isinstance(answer, AssociateRejected):
            conn.close()
            why = negotiation.rejection_text(answer.pdu.raw)
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE,
                                      f"backend {backend.id} rejected the association ({why})")
        if not isinstance(answer, AssociateAccepted):
            conn.abort_transport()
            what = f"A-ABORT ({answer.meaning})" if isinstance(answer, Aborted) else getattr(answer, "text", "?")
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE,
                                      f"backend {backend.id} answered the association with {what}")
        try:
            accepted = negotiation.decode_associate_ac(answer.pdu.raw)
        except ProtocolError as exc:
            conn.write(association.abort(reason=exc.reason))
            conn.close()
            raise OutboundUnavailable(status.BACKEND_UNREACHABLE, f"backend {backend.id}: {exc}") from None
        link = cls(backend, conn, accepted, association)
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
            event = self.association.receive(got)
            if isinstance(event, ReleaseRequested):
                logger.info("backend %s released an idle association itself", self.backend.id)
                conn.write(self.association.release_reply())
                self.closing = True
                conn.close()
            elif isinstance(event, Aborted):
                logger.info("backend %s aborted an idle association", self.backend.id)
                self.closing = True
                conn.close()
            elif isinstance(event, Violation):
                logger.warning("backend %s: %s with no operation in flight: aborting the association",
                               self.backend.id, event.text)
                self.abort(reason=event.reason)
            elif isinstance(event, DataReceived):  # nobody to take a request from it now
                logger.warning("backend %s sent P-DATA-TF with no operation in flight: aborting the association",
                               self.backend.id)
                self.abort(reason=pdu.REASON_UNEXPECTED_PDU)

    # -- ending -------------------------------------------------------------------------
    def abort(self, *, reason: int | None = None) -> None:
        """A-ABORT (as service user on the modality's behalf, or as provider with a reason)."""
        self.closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.conn.is_open:
            if reason is None:
                self.conn.write(self.association.abort(source=pdu.ABORT_SOURCE_USER))
            else:
                self.conn.write(self.association.abort(reason=reason))
            self.conn.close()

    async def release(self, timeout: float) -> bool:
        """A-RELEASE, bounded: a backend that does not answer in time is aborted.
        Returns True when it released cleanly."""
        self.claim()
        self.closing = True
        if not self.conn.is_open:
            return False
        if not self.association.established:  # a release or an abort already under way
            self.abort()
            return False
        self.conn.write(self.association.release_request())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                event = await self.stream.next_event(max(0.0, deadline - loop.time()))
                if isinstance(event, DataReceived):
                    continue  # a late response or event on its way out: not ours to relay any more
                if isinstance(event, ReleaseRequested):  # a collision: the requestor answers first
                    self.conn.write(self.association.release_reply())
                    continue
                if isinstance(event, ReleaseReplied):  # this side requested: the reply ends it
                    self.conn.close()
                    return True
                if isinstance(event, Violation):
                    self.abort(reason=event.reason)
                    return False
                self.conn.close()  # aborted
                return False
        except TimedOut:
            logger.warning("backend %s did not answer A-RELEASE within %.0fs: aborting", self.backend.id, timeout)
            self.abort()
            return False
        except (ConnectionClosed, ProtocolError):
            self.conn.close()
            return False
