"""C-FIND identifiers (PS3.4 C.4.1) as plain bytes: Little Endian only, implicit or explicit
VR, top-level elements with short text values — what SynthIQ's own C-FIND client writes and
reads (``routing.dicom.findscu``), and what the simulated backend answers with.

Writing takes (tag, VR, value) triples. Reading is strict and small: a response identifier
is untrusted, so only the tags asked for are kept, the walk stops at the first element past
the last of them (elements come in ascending tag order, PS3.5 7.1), and anything it cannot
follow before that (an undefined length, a length past the end, tags out of order) raises
``IdentifierError``. Checking the values themselves (UIDs, counts, dates) is the caller's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

_IMPLICIT = struct.Struct("<HHL")  # group, element, value length
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, value length (short VRs)
_EXPLICIT_LONG = struct.Struct("<HH2s2xL")  # group, element, VR, reserved, value length (long VRs)
_LONG_LENGTH = struct.Struct("<L")  # after the VR and two reserved bytes (long VRs)
# Explicit VRs whose length is 4 bytes after 2 reserved ones (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
UNDEFINED = 0xFFFFFFFF
# VRs whose odd-length values are padded with NUL rather than a space (PS3.5 6.2).
_NUL_PADDED = frozenset({"UI", "OB", "UN"})


class IdentifierError(ValueError):
    """An identifier that cannot be read."""


def encode(elements: Iterable[tuple[int, str, str]], *, implicit: bool) -> bytes:
    """An identifier of (tag, VR, value) text elements (values Latin-1, multiple values
    already joined with backslashes; a sequence only empty), written in tag order as PS3.5
    requires."""
    out = []
    for tag, vr, value in sorted(elements):
        raw = value.encode("latin-1", "replace")
        if len(raw) % 2:
            raw += b"\x00" if vr in _NUL_PADDED else b" "
        code = vr.encode("ascii")
        if implicit:
            out.append(_IMPLICIT.pack(tag >> 16, tag & 0xFFFF, len(raw)))
        elif code in _LONG_VRS:  # an empty sequence (a return key) is one of these
            out.append(_EXPLICIT_LONG.pack(tag >> 16, tag & 0xFFFF, code, len(raw)))
        elif len(raw) <= 0xFFFF:
            out.append(_EXPLICIT.pack(tag >> 16, tag & 0xFFFF, code, len(raw)))
        else:
            raise IdentifierError(f"({tag:08X}) of {len(raw)} bytes does not fit a {vr} value")
        out.append(raw)
    return b"".join(out)


def _header(data: bytes, pos: int, *, implicit: bool) -> tuple[int, int, int]:
    """(tag, value length, where the value starts) of the element at ``pos``."""
    end = len(data)
    if end - pos < 8:
        raise IdentifierError(f"the identifier ends inside an element header at byte {pos}")
    if implicit:
        group, element, length = _IMPLICIT.unpack_from(data, pos)
        return group << 16 | element, length, pos + 8
    group, element, vr, length = _EXPLICIT.unpack_from(data, pos)
    if vr in _LONG_VRS:
        if end - pos < 12:
            raise IdentifierError(f"the identifier ends inside an element header at byte {pos}")
        return group << 16 | element, _LONG_LENGTH.unpack_from(data, pos + 8)[0], pos + 12
    return group << 16 | element, length, pos + 8


def decode(data: bytes, wanted: frozenset[int], *, implicit: bool) -> dict[int, str]:
    """The values of the ``wanted`` tags an identifier holds (Latin-1, trailing NUL and space
    padding removed); a wanted tag it lacks is absent. Raises IdentifierError."""
    if not wanted:
        return {}
    last, found, pos, previous = max(wanted), {}, 0, -1
    end = len(data)
    while pos < end:
        tag, length, start = _header(data, pos, implicit=implicit)
        if tag > last:
            break  # ascending order: nothing asked for follows
        if tag <= previous:
            raise IdentifierError(f"({tag:08X}) after ({previous:08X}): elements out of order")
        if length == UNDEFINED:
            raise IdentifierError(f"({tag:08X}) of undefined length before the attributes asked for")
        if length > end - start:
            raise IdentifierError(f"({tag:08X}) of length {length} overruns the identifier")
        if tag in wanted:
            found[tag] = data[start:start + length].decode("latin-1").rstrip("\x00 ")
        previous, pos = tag, start + length
    return found
