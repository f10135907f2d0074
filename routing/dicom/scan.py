"""Read the few header attributes routing needs from a data set's first bytes.

``HeaderScanner`` is fed the data set's fragments as they arrive and answers as soon as
(0020,000D) Study Instance UID has been read (or proven absent: the first element past
it, or the end of the data set). A fast walker steps over elements by their lengths —
explicit or implicit VR, little or big endian, sequences and items of defined or
undefined length — keeping only the values asked for; values it steps over are never
copied, so a large private element before the UID costs nothing. A deflated data set is
inflated only as far as needed, up to a cap. Anything the walker cannot follow (an
unknown VR, UN of undefined length) goes to pydicom's reader as a fallback. The bytes
themselves are never changed.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.filereader import read_dataset
from pydicom.uid import UID

from routing.dicom.tags import MODALITY, PATIENT_ID, PATIENT_NAME, STUDY_UID

# Patient's Name is for the audit trail's Patient participant (before Patient ID: it costs nothing).
HEADER_TAGS = (MODALITY, PATIENT_NAME, PATIENT_ID, STUDY_UID)

# Inflating more than this to find the UID is refused (a "zip bomb" header).
INFLATE_LIMIT = 4 * 1024 * 1024
_FALLBACK_LIMIT = 8 * 1024 * 1024

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
                        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


# (tag, explicit VR short, explicit VR long, implicit VR, item length) per byte order.
_STRUCTS = {little: tuple(struct.Struct(("<" if little else ">") + f) for f in ("HH", "HH2sH", "HH2s2xL", "HHL", "L"))
            for little in (True, False)}


class HeaderError(ValueError):
    """The data set's header cannot be read or lacks a Study Instance UID."""


class _NeedFallback(Exception):
    """Something the fast walker does not follow: let pydicom read the prefix."""


@dataclass(frozen=True)
class Header:
    study_uid: str
    modality: str = ""
    patient_id: str = ""
    values: tuple[tuple[int, str], ...] = ()

    def get(self, tag: int) -> str:
        return dict(self.values).get(tag, "")


@functools.lru_cache(maxsize=256)
def encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated). Unknown or private syntaxes are read as
    explicit VR little endian, as every encapsulated syntax is."""
    uid = UID(transfer_syntax)
    if uid.is_transfer_syntax:
        return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated
    return False, True, False


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").strip("\x00 ")


class HeaderScanner:
    """Feed a data set's bytes in order; ``feed`` returns the Header once it is known.

    ``wanted`` are the top-level tags to keep (all at or before ``stop``); the scan ends
    at the first top-level element past ``stop``. ``require`` (default ``stop``) must be
    among the values found, or HeaderError is raised.
    """

    def __init__(self, transfer_syntax: str, *, wanted: Iterable[int] = HEADER_TAGS, stop: int = STUDY_UID,
                 require: int | None = STUDY_UID, inflate_limit: int = INFLATE_LIMIT):
        self.implicit, self.little, self.deflated = encoding(transfer_syntax)
        self.wanted = frozenset(wanted)
        self.stop = stop
        self.require = require
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if self.deflated else None
        self.inflate_limit = inflate_limit
        self.inflated = 0
        self._buf = bytearray()  # the unwalked tail
        self._prefix = bytearray()  # everything so far, for the pydicom fallback (bounded)
        self._keep_prefix = True
        self._skip = 0  # bytes still to step over (a value longer than what has arrived)
        self._depth = 0  # open sequences and items of undefined length
        self.found: dict[int, str] = {}
        self._fallback_why = ""
        self.done: Header | None = None
        self._tag, self._explicit_short, self._explicit_long, self._implicit, self._length = _STRUCTS[self.little]

    # -- input ------------------------------------------------------------------------
    def feed(self, data: bytes | memoryview, *, last: bool = False) -> Header | None:
        """Scan what arrived; returns the Header when known, None if more bytes are needed.
        ``last`` says the data set ends here. Raises HeaderError."""
        if self.done is not None:
            return self.done
        if self._fallback_why:
            return self._fallback(self._fallback_why, self._inflate(data), last)
        data = self._inflate(data)
        fresh = data
        if self._skip:
            step = min(self._skip, len(data))
            self._skip -= step
            data = data[step:]
        # Walk the new bytes in place unless an element was left incomplete last time.
        view: bytearray | memoryview
        if self._buf:
            self._buf += data
            view = self._buf
        else:
            view = data
        try:
            pos, finished = self._walk(view)
        except _NeedFallback as exc:
            return self._fallback(str(exc), fresh, last)
        except struct.error as exc:  # cannot happen on complete elements; be precise anyway
            raise HeaderError(f"data set header unreadable: {exc}") from exc
        if finished or last:
            return self._finish()
        if view is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(view[pos:])
        if self._keep_prefix:  # kept only while more is needed, for the fallback
            if len(self._prefix) + len(fresh) <= _FALLBACK_LIMIT:
                self._prefix += fresh
            else:
                self._keep_prefix, self._prefix = False, bytearray()
        if self._inflater is not None and self.inflated >= self.inflate_limit:
            raise HeaderError(f"Study Instance UID (0020,000D) not within the first {self.inflate_limit} "
                              "inflated bytes of the deflated data set")
        return None

    def _inflate(self, data: bytes | memoryview) -> memoryview:
        if self._inflater is not None:
            try:
                room = self.inflate_limit - self.inflated
                data = self._inflater.decompress(data, room) if room > 0 else b""
            except zlib.error as exc:
                raise HeaderError(f"deflated data set does not inflate: {exc}") from exc
            self.inflated += len(data)
        return memoryview(data)

    # -- the walker ---------------------------------------------------------------------
    def _walk(self, buf: bytearray | memoryview) -> tuple[int, bool]:
        """Step over the complete elements in ``buf``: (bytes walked, scan over)."""
        pos, end = 0, len(buf)
        length_of = self._length
        while True:
            if end - pos < 8:
                return pos, False
            group, element = self._tag.unpack_from(buf, pos)
            tag = group << 16 | element
            if group == 0xFFFE:  # item / delimiters: no VR, 4-byte length, either encoding
                (length,) = length_of.unpack_from(buf, pos + 4)
                pos += 8
                if self._item(tag, length):
                    continue
            else:
                if self._depth == 0 and tag > self.stop:
                    return pos, True
                start = pos
                if self.implicit:
                    _, _, length = self._implicit.unpack_from(buf, pos)
                    vr = b""
                    pos += 8
                else:
                    vr = bytes(buf[pos + 4:pos + 6])
                    if vr in _SHORT_VRS:
                        _, _, _, length = self._explicit_short.unpack_from(buf, pos)
                        pos += 8
                    elif vr in _LONG_VRS:
                        if end - pos < 12:
                            return pos, False
                        _, _, _, length = self._explicit_long.unpack_from(buf, pos)
                        pos += 12
                    else:
                        raise _NeedFallback(f"unknown VR {vr!r} in ({group:04X},{element:04X})")
                if length == UNDEFINED:
                    if vr == b"UN":
                        raise _NeedFallback("UN element of undefined length")
                    if vr not in (b"", b"SQ"):
                        raise HeaderError(f"undefined length on VR {vr.decode()} in ({group:04X},{element:04X})")
                    self._depth += 1
                    continue
                if self._depth == 0 and tag in self.wanted:
                    if end - pos < length:
                        return start, False  # the value has not all arrived: walk it again later
                    self.found[tag] = _text(bytes(buf[pos:pos + length]))
            # Step over the value (an item of defined length, or an element's value).
            if end - pos < length:
                self._skip = length - (end - pos)
                return end, False
            pos += length

    def _item(self, tag: int, length: int) -> bool:
        """An item or a delimiter: True when it has no value to step over."""
        if tag == ITEM:
            if self._depth == 0:
                raise HeaderError("item tag (FFFE,E000) outside a sequence")
            if length == UNDEFINED:
                self._depth += 1
                return True
            return False
        if tag in (ITEM_END, SEQUENCE_END):
            if self._depth == 0:
                raise HeaderError(f"delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X}) outside a sequence")
            self._depth -= 1
            return True
        raise HeaderError(f"unknown item tag ({tag >> 16:04X},{tag & 0xFFFF:04X})")

    def _finish(self) -> Header:
        if self.require is not None and not self.found.get(self.require):
            name = "Study Instance UID (0020,000D)" if self.require == STUDY_UID else f"({self.require:08X})"
            raise HeaderError(f"{name} missing or empty")
        # Modality (CS) and Patient ID (LO) are only shown and logged: cut to what their VR
        # allows, so a hostile value costs no more (the bytes sent on are untouched).
        self.done = Header(
            study_uid=self.found.get(STUDY_UID, ""),
            modality=self.found.get(MODALITY, "")[:16],
            patient_id=self.found.get(PATIENT_ID, "")[:64],
            values=tuple(sorted(self.found.items())),
        )
        return self.done

    # -- pydicom for what the walker does not follow --------------------------------------
    def _fallback(self, why: str, data: memoryview, last: bool) -> Header | None:
        """Read the prefix with pydicom; from now on every feed comes here."""
        if not self._keep_prefix:
            raise HeaderError(f"data set header unreadable ({why})")
        self._fallback_why = why
        self._prefix += data
        if len(self._prefix) > _FALLBACK_LIMIT:
            raise HeaderError(f"data set header unreadable ({why}) within {_FALLBACK_LIMIT} bytes")
        stop = self.stop
        passed: list[int] = []  # pydicom reads a value cut short without a word: trust it only once past it

        def stop_when(tag: int, vr: str | None, length: int) -> bool:
            if tag > stop:
                passed.append(tag)
                return True
            return False

        try:
            ds = read_dataset(io.BytesIO(bytes(self._prefix)), self.implicit, self.little,
                              stop_when=stop_when, specific_tags=sorted(self.wanted))
            found = {tag: str(ds[tag].value).strip("\x00 ") for tag in self.wanted
                     if tag in ds and ds[tag].value not in (None, "")}
        except Exception as exc:  # pydicom raises many types on bytes that are not DICOM
            if last:
                raise HeaderError(f"data set header unreadable ({why}): {type(exc).__name__}: {exc}") from exc
            return None  # most likely an element cut short: wait for more
        if not passed and not last:
            return None
        self.found.update(found)
        return self._finish()


def scan_header(*, fp: BinaryIO, transfer_syntax: str, chunk: int = 64 * 1024) -> Header:
    """Scan the data set starting at ``fp``'s position (a file or a buffer). Raises HeaderError."""
    scanner = HeaderScanner(transfer_syntax)
    while True:
        data = fp.read(chunk)
        header = scanner.feed(data, last=not data)
        if header is not None:
            return header
