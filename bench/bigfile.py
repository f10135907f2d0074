"""Large synthetic instances written streaming: the header through pydicom, then the
pixel bytes appended in chunks, so a 1 GiB instance never sits in RAM."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from pydicom.uid import generate_uid

from routing.simulators.synthetic import make_header

CHUNK = 1 << 20


def _pattern() -> bytes:
    return bytes(range(256)) * (CHUNK // 256)


def write_large_instance(path: Path, *, pixel_bytes: int, study_uid: str | None = None) -> str:
    """Write a CT instance whose Pixel Data is ``pixel_bytes`` long (even, at most 4 GiB - 2);
    returns the SHA-256 of the data set bytes (everything after the file meta)."""
    if pixel_bytes % 2 or pixel_bytes >= 0xFFFFFFFF:
        raise ValueError("pixel_bytes must be even and below 4 GiB")
    columns = 16384
    rows = max(1, pixel_bytes // 2 // columns)
    # Rows x Columns is nominal (tomo-sized objects are often multi-frame); only the
    # byte count matters for the transfer.
    ds = make_header(study_uid=study_uid or generate_uid(), series_uid=generate_uid(), number=1,
                     rows=min(rows, 65535), columns=columns)
    ds.PatientName = "SYNTHETIC^LARGE"
    ds.PatientID = "SYNLARGE"
    ds.save_as(path, enforce_file_format=True)
    with open(path, "rb") as fp:
        from pynetdicom.dsutils import split_dataset

        _, offset = split_dataset(path)
        fp.seek(offset)
        digest = hashlib.sha256(fp.read())
    # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 32-bit length.
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    digest.update(element)
    pattern = _pattern()
    with open(path, "ab") as fp:
        fp.write(element)
        left = pixel_bytes
        while left:
            chunk = pattern if left >= CHUNK else pattern[:left]
            fp.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()
