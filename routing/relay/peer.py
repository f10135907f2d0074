"""Either side of the relay, the modality or a backend, as the relay reads from it and writes to it.

Both sides are a ``Peer``: a connection, the DIMSE messages read off it, the largest PDU it
takes. So there is one way to frame a message (``frame``) and one relay loop
(``relay_message``) whichever way a message goes: a C-STORE to a backend, a C-FIND
response or a C-GET sub-operation to the modality, the modality's answer back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Sequence

from routing.dicom import pdu
from routing.dicom.association import Association
from routing.relay.connection import ConnectionClosed, PduConnection, TimedOut
from routing.relay.failures import LinkLost
from routing.relay.stream import MessageStream

Fragment = bytes | memoryview


def frame(context_id: int, command: Fragment | None, data: Sequence[Fragment] = (), *, last: bool,
          max_pdu: int) -> bytes:
    """A command set (if any) and data set fragments as P-DATA-TF PDUs of at most ``max_pdu``
    bytes, in one buffer: a small instance costs one system call, not one per PDU. ``last``:
    the final fragment ends the data set."""
    frames = [] if command is None else pdu.fragments(context_id, command, command=True, last=True, max_pdu=max_pdu)
    for n, piece in enumerate(data):
        frames += pdu.fragments(context_id, piece, command=False, last=last and n == len(data) - 1, max_pdu=max_pdu)
    return b"".join(frames)


class Peer:
    def __init__(self, conn: PduConnection, contexts: Container[int], max_pdu: int, association: Association):
        self.conn = conn
        self.association = association
        self.stream = MessageStream(conn, contexts, association)
        self.max_pdu = max_pdu  # 0: no limit announced (pdu.fragments caps it)
        self.closing = False

    @property
    def usable(self) -> bool:
        return not self.closing and self.conn.is_open and self.conn.error is None

    def send_message(self, context_id: int, command: Fragment | None, data: Sequence[Fragment] = (), *,
                     last: bool = True) -> None:
        self.conn.write(frame(context_id, command, data, last=last, max_pdu=self.max_pdu))

    async def drain(self, timeout: float | None) -> None:
        """Wait while this peer reads slowly. Raises LinkLost when it stops reading or is gone."""
        try:
            await self.conn.drain(timeout)
        except TimedOut as exc:
            raise LinkLost(f"{self.conn.name} stopped reading ({exc})") from None
        except ConnectionClosed as exc:
            raise LinkLost(str(exc)) from None
        if not self.usable:
            raise LinkLost(f"{self.conn.name} went away mid-message")


class ModalityPeer(Peer):
    """The inbound side: whole messages to it never interleave (a backend's request relayed
    from an idle association may come while an operation's answer is being written)."""

    def __init__(self, conn: PduConnection, contexts: Container[int], max_pdu: int, association: Association):
        super().__init__(conn, contexts, max_pdu, association)
        self.write_lock = asyncio.Lock()

    async def answer(self, context_id: int, command: Fragment, data: Sequence[Fragment] = ()) -> None:
        """A whole message of SynthIQ's (or a backend's, already read) to the modality."""
        async with self.write_lock:
            self.send_message(context_id, command, data)


async def relay_message(src: MessageStream, dst: Peer, context_id: int, command: Fragment, held: list[memoryview],
                        *, last: bool, timeout: float | None, drain_timeout: float | None) -> int:
    """Pass one message from ``src`` to ``dst``: the command and the data set fragments already
    read (``held``, emptied once sent; ``last`` when they end the message) in one write, then the
    rest of the data set as it arrives: whole P-DATA-TF PDUs when they fit ``dst``'s max PDU,
    re-framed when not, reading nothing more from ``src`` while ``dst`` reads slowly (so memory
    stays bounded). Returns the data set bytes passed. Raises LinkLost when ``dst`` goes away
    or stops reading; whatever reading ``src`` raises goes to the caller."""
    size = sum(len(fragment) for fragment in held)
    dst.send_message(context_id, command, held, last=last)
    held.clear()
    await dst.drain(drain_timeout)
    while not last:
        piece = await src.next_piece(context_id, timeout, pass_whole_up_to=dst.max_pdu)
        last = piece.last
        size += piece.size
        if not dst.usable:
            raise LinkLost(f"{dst.conn.name} went away mid-message")
        if piece.raw is not None:
            dst.conn.write(piece.raw)
        else:
            dst.send_message(context_id, None, [piece.data], last=last)
        if dst.conn.write_paused:
            await dst.drain(drain_timeout)
    return size
