"""Synthetic DICOM studies for the load test, the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

_PIXEL_CACHE: dict[int, bytes] = {}


def make_header(
    *,
    study_uid: str,
    series_uid: str,
    number: int,
    rows: int = 64,
    columns: int = 64,
    patient_id: str = "SYN0001",
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_date: str = "",
) -> Dataset:
    """A CT image's attributes for rows x columns 16-bit pixels, without the Pixel Data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if study_date:
        ds.StudyDate = study_date
    ds.Modality = modality
    ds.PatientName = "SYNTHETIC^PATIENT"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.set_original_encoding(transfer_syntax == ImplicitVRLittleEndian, True)
    return ds


def make_instance(*, rows: int = 64, columns: int = 64, **kwargs) -> Dataset:
    """A CT image of rows x columns 16-bit pixels (512x512 is the ~513 KB slice)."""
    size = rows * columns * 2
    if size not in _PIXEL_CACHE:
        _PIXEL_CACHE[size] = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ds = make_header(rows=rows, columns=columns, **kwargs)
    ds.PixelData = _PIXEL_CACHE[size]
    return ds


def write_study(
    directory: Path, *, count: int, study_uid: str | None = None, **kwargs
) -> tuple[str, list[Path]]:
    """Write a study of ``count`` instances as DICOM files; returns (SUID, paths)."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(1, count + 1):
        ds = make_instance(study_uid=study_uid, series_uid=series_uid, number=n, **kwargs)
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths
