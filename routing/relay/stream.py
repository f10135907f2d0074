"""DIMSE messages over a ``PduConnection``: whole command sets, then the data set piece by piece.

A command set is small and read whole (capped); a data set is never assembled: it is
handed on as the PDVs (or whole P-DATA-TF PDUs) it arrived in. PS3.8 rules are checked
on the way: PDVs only on accepted presentation contexts, one message at a time, every
fragment of a message on its context, a data set only after its command. Every PDU read
passes through the association's protocol state (``routing.dicom.association``): between
operations a release request is an event (``next_message``); inside one, an abort, a release
or a PDU the state does not allow ends the operation as an exception (``association.ending``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from dataclasses import dataclass

from routing.dicom import commands, pdu
from routing.dicom.association import (
    Association,
    DataReceived,
    Event,
    Ignored,
    ReleaseRequested,
    ending,
)
from routing.dicom.pdu import Pdu, Pdv, ProtocolError
from routing.relay.connection import PduConnection

COMMAND_LIMIT = 64 * 1024  # a command set is a few hundred bytes; more is not a command


def peer_name(conn_name: str) -> str:
    """Who a connection's peer is, for a message: a connection is named "pool main inbound"
    (the modality) or "backend node-a"."""
    return "the modality" if conn_name.endswith(" inbound") else conn_name


@dataclass(slots=True)
class Piece:
    """Part of a data set: a whole P-DATA-TF to pass on as it is (``raw``), or one PDV's data."""

    data: memoryview
    last: bool
    raw: memoryview | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.raw is None else len(self.raw)


class MessageStream:
    def __init__(self, conn: PduConnection, contexts: Container[int], association: Association):
        self.conn = conn
        self.contexts = contexts
        self.association = association  # the protocol state every PDU read passes through
        self._pdvs: deque[Pdv] = deque()
        self._data_due = False  # a command with a data set was read, and not yet all of its data set

    async def next_event(self, timeout: float | None) -> Event:
        """What the next PDU means (``routing.dicom.association``); a PDU after the end is skipped."""
        while True:
            event = self.association.receive(await self.conn.next_pdu(timeout))
            if not isinstance(event, Ignored):
                return event

    def ending(self, event: Event) -> Exception:
        """The exception that ends the operation in flight when ``event`` comes instead of its data."""
        return ending(event, who=peer_name(self.conn.name))

    async def next_pdu(self, timeout: float | None) -> Pdu:
        """The next P-DATA-TF, inside an operation: any other event ends it (``ending``)."""
        event = await self.next_event(timeout)
        if isinstance(event, DataReceived):
            return event.pdu
        raise self.ending(event)

    async def next_message(self, timeout: float | None) -> tuple[int, commands.Command] | ReleaseRequested:
        """Between operations: the next message's command set, or the peer's release request."""
        if not self._pdvs:
            event = await self.next_event(timeout)
            if isinstance(event, ReleaseRequested):
                return event
            if not isinstance(event, DataReceived):
                raise self.ending(event)
            self._pdvs.extend(pdu.pdvs(event.pdu))
        return await self.read_command(timeout)

    def _check(self, pdv: Pdv) -> Pdv:
        if pdv.context_id not in self.contexts:
            raise ProtocolError(f"PDV on presentation context {pdv.context_id}, which was not accepted")
        return pdv

    async def _next_pdv(self, timeout: float | None) -> Pdv:
        while not self._pdvs:
            self._pdvs.extend(pdu.pdvs(await self.next_pdu(timeout)))
        return self._check(self._pdvs.popleft())

    @property
    def between_messages(self) -> bool:
        return not self._pdvs

    @property
    def data_set_unread(self) -> bool:
        """The last command read has a data set whose end has not been read yet."""
        return self._data_due

    @property
    def has_input(self) -> bool:
        """Something to read without waiting (or the connection's end to report)."""
        return bool(self._pdvs) or bool(self.conn.ready) or self.conn.error is not None

    async def read_command(self, timeout: float | None) -> tuple[int, commands.Command]:
        """The next message's command set: (presentation context ID, Command)."""
        first = await self._next_pdv(timeout)
        if not first.is_command:
            raise ProtocolError(f"data set fragment on context {first.context_id} where a command was due")
        parts = [first.data]
        # Each fragment counts with its item header: a peer's empty fragments cannot go on for ever.
        size = len(first.data) + pdu.PDV_OVERHEAD
        last = first
        while not last.is_last:
            last = await self._next_pdv(timeout)
            if not last.is_command or last.context_id != first.context_id:
                raise ProtocolError("command set fragments interleaved with another message")
            parts.append(last.data)
            size += len(last.data) + pdu.PDV_OVERHEAD
            if size > COMMAND_LIMIT:
                raise ProtocolError(f"command set longer than {COMMAND_LIMIT} bytes (with its fragments' headers)")
        try:
            command = commands.decode(b"".join(parts))
        except commands.CommandError as exc:
            raise ProtocolError(f"unreadable command set: {exc}") from None
        self._data_due = command.has_data_set
        return first.context_id, command

    async def next_piece(self, context_id: int, timeout: float | None, *, pass_whole_up_to: int = 0) -> Piece:
        """The next part of the data set on ``context_id``. A P-DATA-TF holding only this
        data set's fragments, whose variable field is at most ``pass_whole_up_to`` bytes,
        comes back whole (``raw``) so it can be passed on without re-framing."""
        if not self._pdvs:
            got = await self.next_pdu(timeout)
            items = list(pdu.pdvs(got))
            body = len(got.raw) - pdu.PDU_HEADER_BYTES
            if body <= pass_whole_up_to and all(
                p.context_id == context_id and not p.is_command and (not p.is_last or p is items[-1]) for p in items
            ):
                self._check(items[0])
                data = items[0].data if len(items) == 1 else memoryview(b"")
                self._data_due = not items[-1].is_last
                return Piece(data, items[-1].is_last, raw=got.raw)
            self._pdvs.extend(items)
        pdv = self._check(self._pdvs.popleft())
        if pdv.is_command or pdv.context_id != context_id:
            raise ProtocolError(f"{'command' if pdv.is_command else 'data'} fragment on context "
                                f"{pdv.context_id} inside a data set on context {context_id}")
        self._data_due = not pdv.is_last
        return Piece(pdv.data, pdv.is_last)

    async def read_data_set(self, context_id: int, timeout: float | None, *, limit: int) -> bytes:
        """A whole (small) data set: a query identifier, an action's or event's information.
        Raises ProtocolError past ``limit`` bytes."""
        parts, size = [], 0
        while True:
            piece = await self.next_piece(context_id, timeout)
            parts.append(bytes(piece.data))
            size += len(piece.data) + pdu.PDV_OVERHEAD  # empty fragments count too
            if size > limit:
                raise ProtocolError(f"data set of a query or notification longer than {limit} bytes")
            if piece.last:
                return b"".join(parts)

    async def skip_data_set(self, context_id: int, timeout: float | None) -> int:
        """Read and drop the rest of a data set; returns the bytes dropped."""
        dropped = 0
        while True:
            piece = await self.next_piece(context_id, timeout, pass_whole_up_to=1 << 62)
            dropped += piece.size
            if piece.last:
                return dropped
