"""Read a DICOM Part 10 file's identity from its first bytes: the File Meta Information
(transfer syntax, SOP Class and Instance UIDs) and then, with ``scan.HeaderScanner``, the
Study Instance UID of the data set that follows.

``Part10Scanner`` is fed the file's bytes in order (a STOW-RS part as it arrives) and
answers as soon as the Study Instance UID has been read. It holds nothing but the meta
group (bounded) and what the header scanner holds (bounded); the bytes are never changed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from routing.dicom.scan import Header, HeaderError, HeaderScanner

PREAMBLE = 128
MAGIC = b"DICM"
# The File Meta Information group is a few hundred bytes; anything far larger is hostile.
META_LIMIT = 64 * 1024
TRANSFER_SYNTAX = 0x00020010
SOP_CLASS = 0x00020002
SOP_INSTANCE = 0x00020003
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ELEMENT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<L")


@dataclass(frozen=True)
class Identity:
    """What a Part 10 file says it is (UIDs as written, not yet validated)."""

    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    header: Header

    @property
    def study_uid(self) -> str:
        return self.header.study_uid


class Part10Error(ValueError):
    """Not a Part 10 file, or its meta or header cannot be read within the bounds."""


class Part10Scanner:
    """Feed a Part 10 file's bytes; ``feed`` returns the Identity once the Study Instance
    UID is known, None while more bytes are needed. Raises Part10Error."""

    def __init__(self, *, meta_limit: int = META_LIMIT):
        self.meta_limit = meta_limit
        self._buf = bytearray()  # the preamble and meta, until the meta has been read
        self._meta: dict[int, str] | None = None
        self._scanner: HeaderScanner | None = None
        self.done: Identity | None = None

    @property
    def meta(self) -> dict[int, str]:
        return dict(self._meta or {})

    def feed(self, data: bytes | memoryview, *, last: bool = False) -> Identity | None:
        if self.done is not None:
            return self.done
        if self._scanner is None:
            self._buf += data
            rest = self._read_meta(last)
            if rest is None:
                return None
            data = rest
        assert self._scanner is not None and self._meta is not None
        try:
            header = self._scanner.feed(data, last=last)
        except HeaderError as exc:
            raise Part10Error(str(exc)) from exc
        if header is None:
            return None
        self.done = Identity(self._meta.get(TRANSFER_SYNTAX, ""), self._meta.get(SOP_CLASS, ""),
                             self._meta.get(SOP_INSTANCE, ""), header)
        return self.done

    def _read_meta(self, last: bool) -> bytes | None:
        """Walk the meta group once it has all arrived; returns the data set bytes that
        came with it, or None while more is needed."""
        buf = self._buf
        if len(buf) >= PREAMBLE + 4 and buf[PREAMBLE:PREAMBLE + 4] != MAGIC:
            raise Part10Error("not a DICOM Part 10 file (no DICM prefix after the 128-byte preamble)")
        pos = PREAMBLE + 4
        found: dict[int, str] = {}
        while True:
            if pos > self.meta_limit:
                raise Part10Error(f"File Meta Information longer than {self.meta_limit} bytes")
            if len(buf) < pos + 8:
                break
            group, element, vr, short = _ELEMENT.unpack_from(buf, pos)
            if group != 0x0002:
                if TRANSFER_SYNTAX not in found:
                    raise Part10Error("File Meta Information without a Transfer Syntax UID (0002,0010)")
                self._meta = found
                self._scanner = HeaderScanner(found[TRANSFER_SYNTAX])
                rest = bytes(buf[pos:])
                self._buf = bytearray()
                return rest
            if bytes(vr) in _LONG_VRS:
                if len(buf) < pos + 12:
                    break
                (length,) = _LONG_LENGTH.unpack_from(buf, pos + 8)
                start = pos + 12
            else:
                length, start = short, pos + 8
            if length == 0xFFFFFFFF:
                raise Part10Error("File Meta Information element of undefined length")
            if start + length > self.meta_limit:
                raise Part10Error(f"File Meta Information longer than {self.meta_limit} bytes")
            if len(buf) < start + length:
                break
            if bytes(vr) == b"UI":
                found[(group << 16) | element] = bytes(buf[start:start + length]).decode("latin-1").strip("\x00 ")
            pos = start + length
        if last:
            raise Part10Error("the file ends within its preamble or File Meta Information")
        return None
