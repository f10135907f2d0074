"""Large synthetic instances written streaming: the header through pydicom, then the
pixel bytes appended in chunks, so a 1 GiB instance never sits in RAM."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

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
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "SYNTHETIC^LARGE"
    ds.PatientID = "SYNLARGE"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    # Rows x Columns is nominal (tomo-sized objects are often multi-frame); only the
    # byte count matters for the transfer.
    ds.Rows = min(rows, 65535)
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.set_original_encoding(False, True)
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
