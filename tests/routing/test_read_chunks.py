"""The relay's read chunks: a filled chunk is reused without zero-filling, but only once
nothing refers to it any more (a PDU held for routing or queued for writing keeps its bytes)."""

from __future__ import annotations

import asyncio

from routing.relay.connection import CHUNK_MIN, CHUNK_TAIL, PduConnection

RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-RELEASE-RQ: 10 bytes


def _fill(conn: PduConnection, marker: int) -> bytearray:
    """Read whole PDUs into the current chunk until it is retired; return that chunk."""
    view = conn.get_buffer(-1)
    chunk = view.obj
    assert isinstance(chunk, bytearray)
    count = (len(view) - CHUNK_TAIL) // len(RELEASE_RQ) + 1
    data = RELEASE_RQ[:-1] + bytes([marker])
    view[: count * len(data)] = data * count
    conn.buffer_updated(count * len(data))
    return chunk


def test_a_chunk_is_reused_only_once_no_pdu_refers_to_it():
    async def scenario() -> None:
        conn = PduConnection(name="test", max_length=1 << 20)
        first = _fill(conn, 1)
        kept = conn.pop()  # a PDU still held (for routing, or queued for writing)
        assert kept is not None and kept.raw.obj is first
        while conn.pop() is not None:
            pass
        second = _fill(conn, 2)
        assert second is not first
        while conn.pop() is not None:
            pass
        third = _fill(conn, 3)
        assert third is not first, "a chunk a PDU still refers to must not be overwritten"
        assert bytes(kept.raw) == RELEASE_RQ[:-1] + b"\x01"
        while conn.pop() is not None:
            pass
        # Nothing refers to the second chunk any more: it is read into again.
        fourth = conn.get_buffer(-1).obj
        assert fourth is second and len(fourth) == CHUNK_MIN
        del kept

    asyncio.run(scenario())
