"""The streaming Study Instance UID scan: every encoding pydicom's test files carry, fed
in pieces of every size, and the edge cases a relay meets."""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import split_dataset

from routing.dicom.scan import HeaderError, HeaderScanner

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"


def _files() -> list[tuple[str, bytes, str, str]]:
    """pydicom's own test files, those it ships: not get_testdata_files, which also tries to
    download its external ones (15 s of failed retries at every collection without internet)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(str(p) for p in (Path(DATA_ROOT) / "test_files").glob("*.dcm")):
            try:
                ds = dcmread(path, stop_before_pixels=True)
                ts = str(ds.file_meta.TransferSyntaxUID)
                _, offset = split_dataset(Path(path))
            except Exception:
                continue
            suid = str(ds.get("StudyInstanceUID", "") or "").strip("\x00 ")
            out.append((Path(path).name, Path(path).read_bytes()[offset:], ts, suid))
    return out


FILES = _files()


def _scan(raw: bytes, ts: str, step: int) -> str | None:
    scanner = HeaderScanner(ts)
    for start in range(0, max(len(raw), 1), step):
        end = start + step
        header = scanner.feed(raw[start:end], last=end >= len(raw))
        if header is not None:
            return header.study_uid
    return None


@pytest.mark.parametrize("name, raw, ts, suid", FILES, ids=[f[0] for f in FILES])
def test_every_test_file_gives_its_study_uid_however_it_is_fragmented(name, raw, ts, suid):
    assert len(FILES) > 60
    for step in (1, 7, 4096, len(raw) or 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if suid:
                assert _scan(raw, ts, step) == suid, f"{name} ({ts}) fed in pieces of {step}"
            else:
                with pytest.raises(HeaderError, match="missing"):
                    _scan(raw, ts, step)


def _encode(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = little, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def _with_sequences_before_the_uid(undefined: bool) -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.3"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    inner = Dataset()
    inner.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedStudySequence = Sequence([item, item])
    ds.PatientID = "PID-1"
    ds.StudyInstanceUID = "1.2.826.0.1.9.9"
    ds.SeriesInstanceUID = "1.2.826.0.1.9.9.1"
    if undefined:
        ds["ReferencedStudySequence"].is_undefined_length = True
        for it in ds.ReferencedStudySequence:
            it.is_undefined_length_sequence_item = True
        ds.ReferencedStudySequence[0]["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    return ds


@pytest.mark.parametrize("implicit, little, ts", [(False, True, EXPLICIT_LE), (True, True, IMPLICIT_LE),
                                                  (False, False, EXPLICIT_BE)])
@pytest.mark.parametrize("undefined", [False, True])
def test_sequences_of_defined_and_undefined_length_are_stepped_over(implicit, little, ts, undefined):
    raw = _encode(_with_sequences_before_the_uid(undefined), implicit=implicit, little=little)
    for step in (1, 3, 64, len(raw)):
        scanner = HeaderScanner(ts)
        header = None
        for start in range(0, len(raw), step):
            header = scanner.feed(raw[start:start + step], last=start + step >= len(raw)) or header
            if header:
                break
        assert header is not None
        assert (header.study_uid, header.modality, header.patient_id) == ("1.2.826.0.1.9.9", "MR", "PID-1")


def test_the_scan_ends_at_the_first_element_past_the_uid_without_reading_on():
    raw = _encode(_with_sequences_before_the_uid(False))
    cut = raw.index(b"\x20\x00\x0e\x00")  # (0020,000E), just past the Study Instance UID
    assert HeaderScanner(EXPLICIT_LE).feed(raw[:cut + 8]).study_uid == "1.2.826.0.1.9.9"
    assert HeaderScanner(EXPLICIT_LE).feed(raw[:cut]) is None  # might still be coming


def test_a_large_value_before_the_uid_is_stepped_over_not_kept():
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00091010, "OB", b"\x00" * (8 << 20))
    raw = _encode(ds)
    scanner = HeaderScanner(EXPLICIT_LE)
    header = None
    for start in range(0, len(raw), 65536):
        header = scanner.feed(raw[start:start + 65536])
        if header:
            break
        assert len(scanner._buf) < 65536 + 12
    assert header is not None and header.study_uid == ds.StudyInstanceUID


def test_deflate_is_inflated_only_up_to_its_cap():
    raw = _encode(_with_sequences_before_the_uid(False))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(raw) + packer.flush()
    assert HeaderScanner("1.2.840.10008.1.2.1.99").feed(deflated, last=True).study_uid == "1.2.826.0.1.9.9"
    bomb = Dataset()
    bomb.add_new(0x00091010, "OB", b"\x00" * (16 << 20))
    bomb.StudyInstanceUID = "1.2.3"
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = packer.compress(_encode(bomb)) + packer.flush()
    assert len(compressed) < 100_000
    with pytest.raises(HeaderError, match="not within the first"):
        HeaderScanner("1.2.840.10008.1.2.1.99", inflate_limit=1 << 20).feed(compressed)
    with pytest.raises(HeaderError, match="does not inflate"):
        HeaderScanner("1.2.840.10008.1.2.1.99").feed(b"not deflate data at all" * 10)


def test_a_missing_or_empty_uid_and_garbage_are_header_errors():
    ds = Dataset()
    ds.PatientID = "X"
    ds.SeriesInstanceUID = "1.2"
    with pytest.raises(HeaderError, match="missing"):
        HeaderScanner(EXPLICIT_LE).feed(_encode(ds))
    ds.StudyInstanceUID = ""
    with pytest.raises(HeaderError, match="missing or empty"):
        HeaderScanner(EXPLICIT_LE).feed(_encode(ds), last=True)
    with pytest.raises(HeaderError):
        HeaderScanner(EXPLICIT_LE).feed(b"\x08\x00\x05\x00CS\xff\xff" + b"x" * 20, last=True)


def test_inputs_the_coverage_guided_fuzzer_found_are_answered_not_crashes():
    # atheris (bench/fuzz_decoders.py): a deferred value in the pydicom fallback raised AttributeError.
    import base64

    from bench.fuzz_decoders import one_input

    one_input(base64.b64decode("CQAAAAAAAAAAIAANAAAAAMnJycnJycnJycnJycnJycnJyQA="))  # raises nothing else
