"""PDU framing and P-DATA-TF, with byte strings only (no sockets, no settings)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from routing.dicom import pdu


def _pdata(*items: tuple[int, int, bytes]) -> bytes:
    body = b"".join(struct.pack(">LBB", len(d) + 2, ctx, mch) + d for ctx, mch, d in items)
    return struct.pack(">BxL", 4, len(body)) + body


def test_a_pdu_split_anywhere_comes_out_whole_and_in_order():
    stream = _pdata((1, 1, b"abcd")) + pdu.release_rq() + _pdata((3, 2, b"x" * 1000))
    for cut in range(1, len(stream)):
        buffer = pdu.PduBuffer(max_length=4096)
        out = []
        for part in (stream[:cut], stream[cut:]):
            buffer.feed(part)
            while (got := buffer.next()) is not None:
                out.append(bytes(got.raw))
        assert b"".join(out) == stream
        assert [p[0] for p in out] == [4, 5, 4]
        assert buffer.buffered == 0


@given(st.lists(st.binary(min_size=2, max_size=300).map(lambda b: b[: len(b) & ~1] or b"\0\0"), min_size=1,
                max_size=8),
       st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=40))
def test_framing_is_independent_of_how_the_bytes_arrive(fragments, cuts):
    pdus = [_pdata((1, 0, f)) for f in fragments]
    stream = b"".join(pdus)
    buffer = pdu.PduBuffer(max_length=1 << 16)
    out, pos, n = [], 0, 0
    while pos < len(stream):
        step = cuts[n % len(cuts)]
        buffer.feed(stream[pos:pos + step])
        pos, n = pos + step, n + 1
        while (got := buffer.next()) is not None:
            out.append(bytes(got.raw))
    assert out == pdus


def test_a_pdu_inside_one_chunk_is_a_view_not_a_copy():
    chunk = _pdata((1, 2, b"data"))
    buffer = pdu.PduBuffer(max_length=4096)
    buffer.feed(chunk)
    got = buffer.next()
    assert got is not None and got.raw.obj is chunk


def test_an_announced_length_over_the_cap_is_refused_before_any_byte_of_it_is_kept():
    buffer = pdu.PduBuffer(max_length=65536)
    buffer.feed(struct.pack(">BxL", 1, 0xFFFFFFF0) + b"\0" * 10)
    with pytest.raises(pdu.PduTooLarge, match="announced a 4294967280-byte PDU"):
        buffer.next()
    assert buffer.buffered == 16  # what arrived, not what was announced


def test_p_data_has_its_own_cap_and_unknown_types_are_protocol_errors():
    buffer = pdu.PduBuffer(max_length=1 << 20, max_pdata_length=16384)
    buffer.feed(struct.pack(">BxL", 4, 16385))
    with pytest.raises(pdu.PduTooLarge):
        buffer.next()
    unknown = pdu.PduBuffer(max_length=4096)
    unknown.feed(b"\x09\x00\x00\x00\x00\x00")
    with pytest.raises(pdu.ProtocolError) as error:
        unknown.next()
    assert error.value.reason == pdu.REASON_UNRECOGNIZED_PDU


def test_pdvs_are_read_as_pynetdicom_writes_them():
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[1, b"\x03command"], [3, b"\x00data!!"]]
    raw = P_DATA_TF(primitive).encode()
    buffer = pdu.PduBuffer(max_length=4096)
    buffer.feed(raw)
    items = list(pdu.pdvs(buffer.next()))
    assert [(p.context_id, p.is_command, p.is_last, bytes(p.data)) for p in items] == [
        (1, True, True, b"command"), (3, False, False, b"data!!")]


@pytest.mark.parametrize("bad", [
    _pdata()[:6],  # no PDV at all
    struct.pack(">BxL", 4, 8) + struct.pack(">LBB", 99, 1, 0) + b"xx",  # item longer than the PDU
    struct.pack(">BxL", 4, 8) + struct.pack(">LBB", 4, 1, 0x10) + b"xx",  # reserved control bits
])
def test_malformed_p_data_is_a_protocol_error(bad):
    buffer = pdu.PduBuffer(max_length=4096)
    buffer.feed(bad)
    with pytest.raises(pdu.ProtocolError):
        list(pdu.pdvs(buffer.next()))


@pytest.mark.parametrize("max_pdu", [4096, 16384, 16390, 0])
def test_re_fragmenting_respects_the_peers_max_pdu_even_lengths_and_the_last_bit(max_pdu):
    data = bytes(range(256)) * 400  # 102,400 bytes
    frames = pdu.fragments(5, data, command=False, last=True, max_pdu=max_pdu)
    limit = max_pdu or pdu.UNLIMITED_PDU_CAP
    buffer = pdu.PduBuffer(max_length=1 << 21)
    out = b""
    items = []
    for frame in frames:
        buffer.feed(frame)
        got = buffer.next()
        assert len(got.raw) - 6 <= limit  # the variable field, PDV header included
        [item] = list(pdu.pdvs(got))
        assert len(item.data) % 2 == 0
        items.append(item)
        out += bytes(item.data)
    assert out == data
    assert [i.is_last for i in items] == [False] * (len(items) - 1) + [True]
    assert {i.context_id for i in items} == {5}


def test_abort_and_release_pdus_are_pynetdicoms():
    assert pdu.release_rq() == b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    assert pdu.release_rp() == b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    raw = pdu.abort(reason=pdu.REASON_UNEXPECTED_PDU)
    buffer = pdu.PduBuffer(max_length=64)
    buffer.feed(raw)
    assert pdu.abort_fields(buffer.next()) == (2, 2)
    buffer.feed(pdu.abort(source=pdu.ABORT_SOURCE_USER, reason=5))
    assert pdu.abort_fields(buffer.next()) == (0, 0)  # a user abort carries no reason
