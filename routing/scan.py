"""Read the few header attributes routing needs without decoding the data set.

Only the elements up to (0020,000D) Study Instance UID are scanned; large values on
the way are skipped by seeking, and a deflated data set is inflated only as far as
needed. The bytes themselves are never changed.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID

STUDY_UID = Tag(0x0020, 0x000D)
MODALITY = Tag(0x0008, 0x0060)
PATIENT_ID = Tag(0x0010, 0x0020)
_WANTED = [MODALITY, PATIENT_ID, STUDY_UID]
_INFLATE_STEP = 64 * 1024
_INFLATE_LIMIT = 64 * 1024 * 1024


class HeaderError(ValueError):
    """The data set's header cannot be read or lacks a Study Instance UID."""


@dataclass(frozen=True)
class Header:
    study_uid: str
    modality: str
    patient_id: str


def _encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated). Unknown or private syntaxes are
    treated as explicit VR little endian, as every encapsulated syntax is."""
    uid = UID(transfer_syntax)
    if uid.is_transfer_syntax:
        return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated
    return False, True, False


def _parse(fp: BinaryIO, implicit: bool, little: bool) -> Header | None:
    ds = read_dataset(
        fp,
        implicit,
        little,
        stop_when=lambda tag, vr, length: tag > STUDY_UID,
        defer_size=4096,
        specific_tags=_WANTED,
    )
    if STUDY_UID not in ds:
        return None
    suid = str(ds[STUDY_UID].value or "").strip("\x00 ")
    if not suid:
        return None
    return Header(
        study_uid=suid,
        modality=str(ds[MODALITY].value or "") if MODALITY in ds else "",
        patient_id=str(ds[PATIENT_ID].value or "") if PATIENT_ID in ds else "",
    )


def _scan_deflated(fp: BinaryIO, implicit: bool, little: bool) -> Header | None:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    plain = bytearray()
    while len(plain) < _INFLATE_LIMIT:
        chunk = fp.read(_INFLATE_STEP)
        if chunk:
            plain += inflater.decompress(chunk)
        try:
            header = _parse(io.BytesIO(bytes(plain)), implicit, little)
        except (EOFError, ValueError, OSError):
            header = None  # the prefix may end inside an element: inflate more
        if header or not chunk:
            return header
    return None


def scan_header(*, fp: BinaryIO, transfer_syntax: str) -> Header:
    """Scan the data set starting at ``fp``'s position. Raises HeaderError."""
    implicit, little, deflated = _encoding(transfer_syntax)
    try:
        if deflated:
            header = _scan_deflated(fp, implicit, little)
        else:
            header = _parse(fp, implicit, little)
    except zlib.error as exc:
        raise HeaderError(f"deflated data set does not inflate: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise HeaderError(f"data set header unreadable: {exc}") from exc
    if header is None:
        raise HeaderError("Study Instance UID (0020,000D) missing or empty")
    return header
