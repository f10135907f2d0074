"""PDU framing over a byte stream, P-DATA-TF parsing and building, and the small PDUs.

``PduBuffer`` takes bytes as they arrive and hands back whole PDUs. It holds only what
arrived: an announced length is checked against the caller's cap before anything is
kept for it, and nothing is ever allocated for bytes that have not come (a peer that
announces 16 MB and sends ten bytes costs ten bytes). A PDU that lies inside one
received chunk is returned as a view of it, without a copy.

P-DATA-TF is the hot path, so its PDV items are read and written here with ``struct``
instead of pynetdicom's ``P_DATA_TF`` (which copies every PDV); the association PDUs
(A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT) go through ``pynetdicom.pdu`` (see
``routing.dicom.negotiation`` and the helpers below).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, A_RELEASE_RQ

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ_TYPE = 0x05
A_RELEASE_RP_TYPE = 0x06
A_ABORT = 0x07
PDU_TYPES = frozenset(range(1, 8))

HEADER = struct.Struct(">BxL")  # PDU type, reserved, length of what follows
PDV_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, message control header
PDATA_HEADER = struct.Struct(">BxLLBB")  # a P-DATA-TF holding one PDV: both headers at once
PDU_HEADER_BYTES = HEADER.size
PDV_OVERHEAD = PDV_HEADER.size  # what each PDV adds inside a PDU's variable field

# Message control header bits (PS3.8 E.2).
MCH_COMMAND = 0x01
MCH_LAST = 0x02

# A-ABORT sources and provider reasons (PS3.8 9.3.8).
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
REASON_NOT_SPECIFIED = 0
REASON_UNRECOGNIZED_PDU = 1
REASON_UNEXPECTED_PDU = 2
REASON_UNRECOGNIZED_PARAMETER = 4
REASON_UNEXPECTED_PARAMETER = 5
REASON_INVALID_PARAMETER = 6

# A peer advertising "no limit" (0) still gets PDUs of at most this size from SynthIQ.
UNLIMITED_PDU_CAP = 1 << 20


class ProtocolError(Exception):
    """The peer broke PS3.8: the association is aborted with ``reason`` (provider source)."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER):
        super().__init__(message)
        self.reason = reason


class PduTooLarge(ProtocolError):
    def __init__(self, announced: int, limit: int):
        super().__init__(f"announced a {announced}-byte PDU (limit {limit})", REASON_INVALID_PARAMETER)
        self.announced, self.limit = announced, limit


@dataclass(slots=True)
class Pdu:
    type: int
    raw: memoryview  # the whole PDU, header included

    @property
    def body(self) -> memoryview:
        return self.raw[PDU_HEADER_BYTES:]

    def __len__(self) -> int:
        return len(self.raw)


class PduBuffer:
    """Bytes in, whole PDUs out (sans-I/O). ``limit(pdu_type)`` caps announced lengths."""

    def __init__(self, *, max_length: int, max_pdata_length: int | None = None):
        self._chunks: deque[bytes | bytearray | memoryview] = deque()
        self._offset = 0  # read position inside the first chunk
        self.buffered = 0  # bytes held, not yet returned as PDUs
        self.max_length = max_length
        self.max_pdata_length = max_pdata_length if max_pdata_length is not None else max_length

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._chunks.append(data)
            self.buffered += len(data)

    def _peek_header(self) -> tuple[int, int] | None:
        if self.buffered < PDU_HEADER_BYTES:
            return None
        first = self._chunks[0]
        if len(first) - self._offset >= PDU_HEADER_BYTES:
            return HEADER.unpack_from(first, self._offset)
        return HEADER.unpack(self._take(PDU_HEADER_BYTES, consume=False))

    def _take(self, n: int, *, consume: bool = True) -> bytes | memoryview:
        """The next ``n`` buffered bytes: a view when they lie in one chunk, else joined."""
        first = self._chunks[0]
        start = self._offset
        if len(first) - start >= n:
            out: bytes | memoryview = memoryview(first)[start:start + n]
            if consume:
                self._offset += n
                if self._offset == len(first):
                    self._chunks.popleft()
                    self._offset = 0
                self.buffered -= n
            return out
        parts = []
        need, offset, index = n, start, 0
        while True:
            chunk = self._chunks[index]
            take = min(len(chunk) - offset, need)
            parts.append(memoryview(chunk)[offset:offset + take])
            need -= take
            if not need:
                end = offset + take  # where the taken bytes end inside chunk ``index``
                break
            index, offset = index + 1, 0
        joined = b"".join(parts)
        if consume:
            for _ in range(index):  # the chunks before the last one touched are used up
                self._chunks.popleft()
            if end == len(self._chunks[0]):
                self._chunks.popleft()
                end = 0
            self._offset = end
            self.buffered -= n
        return joined

    def next(self) -> Pdu | None:
        """The next whole PDU, or None until more bytes arrive. Raises ProtocolError."""
        header = self._peek_header()
        if header is None:
            return None
        pdu_type, length = header
        if pdu_type not in PDU_TYPES:
            raise ProtocolError(f"unrecognized PDU type 0x{pdu_type:02X}", REASON_UNRECOGNIZED_PDU)
        limit = self.max_pdata_length if pdu_type == P_DATA_TF else self.max_length
        if length > limit:
            raise PduTooLarge(length, limit)
        total = PDU_HEADER_BYTES + length
        if self.buffered < total:
            return None
        raw = self._take(total)
        return Pdu(pdu_type, raw if isinstance(raw, memoryview) else memoryview(raw))


# -- P-DATA-TF ----------------------------------------------------------------------------


@dataclass(slots=True)
class Pdv:
    context_id: int
    control: int
    data: memoryview

    @property
    def is_command(self) -> bool:
        return bool(self.control & MCH_COMMAND)

    @property
    def is_last(self) -> bool:
        return bool(self.control & MCH_LAST)


def pdvs(pdu: Pdu) -> Iterator[Pdv]:
    """The PDV items of a P-DATA-TF, as views of its bytes. Raises ProtocolError."""
    raw = pdu.raw
    end = len(raw)
    pos = PDU_HEADER_BYTES
    if pos == end:
        raise ProtocolError("P-DATA-TF without a PDV item")
    while pos < end:
        if end - pos < PDV_OVERHEAD:
            raise ProtocolError("P-DATA-TF ends inside a PDV item header")
        length, context_id, control = PDV_HEADER.unpack_from(raw, pos)
        if length < 2 or pos + 4 + length > end:
            raise ProtocolError(f"PDV item length {length} does not fit its P-DATA-TF")
        if control & 0xFC:
            raise ProtocolError(f"PDV message control header 0x{control:02X} has reserved bits set")
        yield Pdv(context_id, control, raw[pos + PDV_OVERHEAD:pos + 4 + length])
        pos += 4 + length


def pdata(context_id: int, control: int, data: bytes | memoryview) -> bytes:
    """A P-DATA-TF carrying one PDV."""
    n = len(data)
    return PDATA_HEADER.pack(P_DATA_TF, n + PDV_OVERHEAD, n + 2, context_id, control) + data


def fragment_size(max_pdu: int) -> int:
    """Most data bytes one PDV may carry in a P-DATA-TF of at most ``max_pdu`` bytes
    (variable field): the PDV header counts, fragments stay even (PS3.5 7.1: values have
    even length, and DCMTK aborts on an "odd fragment length")."""
    limit = max_pdu if max_pdu else UNLIMITED_PDU_CAP
    return max(2, (limit - PDV_OVERHEAD) & ~1)


def fragments(context_id: int, data: bytes | memoryview, *, command: bool, last: bool, max_pdu: int) -> list[bytes]:
    """``data`` as P-DATA-TF PDUs for a peer whose max PDU is ``max_pdu``; only the final
    one carries the last-fragment bit when ``last``."""
    size = fragment_size(max_pdu)
    view = memoryview(data)
    base = MCH_COMMAND if command else 0
    n = len(view)
    if n <= size:
        return [pdata(context_id, base | (MCH_LAST if last else 0), view)]
    out = []
    for start in range(0, n, size):
        end = min(n, start + size)
        out.append(pdata(context_id, base | (MCH_LAST if last and end == n else 0), view[start:end]))
    return out


# -- the small PDUs (pynetdicom's classes) ---------------------------------------------


def release_rq() -> bytes:
    return A_RELEASE_RQ().encode()


def release_rp() -> bytes:
    return A_RELEASE_RP().encode()


def abort(*, source: int = ABORT_SOURCE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    pdu = A_ABORT_RQ()
    pdu.source = source
    # PS3.8 9.3.8: the reason is 0 unless the provider (source 2) aborts.
    pdu.reason_diagnostic = reason if source == ABORT_SOURCE_PROVIDER else 0
    return pdu.encode()


_ABORT_REASONS = {0: "reason not specified", 1: "unrecognized PDU", 2: "unexpected PDU",
                  4: "unrecognized PDU parameter", 5: "unexpected PDU parameter", 6: "invalid PDU parameter value"}


def abort_meaning(source: int, reason: int) -> str:
    """An A-ABORT's source and reason in words (PS3.8 Table 9-26)."""
    if source == ABORT_SOURCE_PROVIDER:
        return f"its DICOM upper layer aborted: {_ABORT_REASONS.get(reason, f'reason {reason}')}"
    return "its application aborted" if source == 0 else f"source {source}, reason {reason}"


def abort_fields(pdu: Pdu) -> tuple[int, int]:
    """(source, reason) of an A-ABORT: its 9th and 10th bytes (PS3.8 9.3.8). An A-ABORT too
    short to carry them (a peer's bytes: anything may come) still ends the association: (0, 0)."""
    raw = pdu.raw
    return (raw[8], raw[9]) if len(raw) >= 10 else (0, 0)
