"""A requestor's association over a blocking socket: ``dicom.association`` driven by reads and writes.

SynthIQ's own DICOM client (``routing.dicom.scu``, and ``findscu`` on it) and the ``/readyz``
check (``routing.readiness``) read the peer's PDUs with the same framer as the relay
(``pdu.PduBuffer``, bounded) and see them as the same typed events (``association.Event``):
the protocol state lives in one place. Each PDU must arrive within the
deadline (``arm`` starts a new one), so a peer that dribbles bytes cannot hold a caller for
ever. Blocking: for management commands and worker threads, never an event loop.
"""

from __future__ import annotations

import socket
import time

from routing.dicom import pdu
from routing.dicom.association import Association, Event, ReleaseRequested, Role

RECEIVE = 256 * 1024  # the most one read takes


class BlockingAssociation:
    def __init__(self, sock: socket.socket, timeout: float, *, max_pdata: int, max_other: int = 64 * 1024):
        self.sock = sock
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.framer = pdu.PduBuffer(max_length=max_other, max_pdata_length=max_pdata)
        self.state = Association(Role.REQUESTOR)

    def arm(self, within: float | None = None) -> None:
        """The next message (or PDU) must arrive within ``within`` seconds (default ``timeout``) from now."""
        self.deadline = time.monotonic() + (self.timeout if within is None else within)

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)  # not what a read left of its deadline
        self.sock.sendall(data)

    def request(self, associate_rq: bytes) -> Event:
        """Send the A-ASSOCIATE-RQ; the answer (AssociateAccepted, AssociateRejected, Aborted or a Violation)."""
        self.send(self.state.request(associate_rq))
        return self.event()

    def event(self) -> Event:
        """What the peer's next PDU means. Raises TimeoutError, ConnectionError or pdu.ProtocolError
        (a PDU that cannot be framed, or is larger than allowed)."""
        while (got := self.framer.next()) is None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within {self.timeout:g} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(RECEIVE)
            except TimeoutError:
                raise TimeoutError(f"no answer within {self.timeout:g} s") from None
            if not data:
                raise ConnectionError("it closed the connection")
            self.framer.feed(data)
        return self.state.receive(got)

    def release(self) -> None:
        """A-RELEASE-RQ, and its reply awaited (within the timeout; data still in flight is
        dropped) before the caller closes the socket. Raises as ``event`` does."""
        self.send(self.state.release_request())
        self.arm()
        while not self.state.over:  # a reply, an abort or a violation ends it
            if isinstance(self.event(), ReleaseRequested):  # a collision: the requestor answers first
                self.send(self.state.release_reply())

    def abort(self) -> None:
        """A-ABORT as the service user, bounded (a peer that reads nothing does not hold the caller). Never raises."""
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(self.state.abort(source=pdu.ABORT_SOURCE_USER))
        except OSError:
            pass  # already gone
