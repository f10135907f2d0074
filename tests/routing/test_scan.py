"""Reading the Study Instance UID from the header only."""

from __future__ import annotations

import io
import zlib

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from routing.dicom.scan import HeaderError, scan_header


def _encoded(name: str) -> tuple[bytes, str, str]:
    ds = dcmread(get_testdata_file(name))
    ts = ds.file_meta.TransferSyntaxUID
    with open(get_testdata_file(name), "rb") as fp:
        from pynetdicom.dsutils import split_dataset

        _, offset = split_dataset(get_testdata_file(name))
        fp.seek(offset)
        return fp.read(), ts, ds.StudyInstanceUID


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "image_dfl.dcm", "JPEG2000.dcm"])
def test_the_study_uid_is_read_from_every_encoding(name):
    raw, ts, suid = _encoded(name)
    assert scan_header(fp=io.BytesIO(raw), transfer_syntax=ts).study_uid == suid


def test_a_big_element_before_the_study_uid_is_skipped_not_read():
    raw, ts, suid = _encoded("CT_small.dcm")
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00091010, "OB", b"\x00" * (8 << 20))  # 8 MB private blob ahead of (0020,000D)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    assert scan_header(fp=io.BytesIO(buf.getvalue()), transfer_syntax=ts).study_uid == suid


def test_garbage_and_a_missing_study_uid_raise_a_precise_error():
    with pytest.raises(HeaderError, match="missing"):
        scan_header(fp=io.BytesIO(b""), transfer_syntax="1.2.840.10008.1.2.1")
    with pytest.raises(HeaderError):
        scan_header(fp=io.BytesIO(b"\x08\x00\x05\x00CS\xff\xff" + b"x" * 20), transfer_syntax="1.2.840.10008.1.2.1")
    with pytest.raises(HeaderError, match="inflate"):
        scan_header(fp=io.BytesIO(b"not deflate data at all" * 10), transfer_syntax="1.2.840.10008.1.2.1.99")


def test_a_deflated_data_set_is_inflated_only_as_far_as_the_header():
    raw, ts, suid = _encoded("image_dfl.dcm")
    plain = zlib.decompressobj(-15).decompress(raw)
    assert len(plain) > len(raw)
    assert scan_header(fp=io.BytesIO(raw), transfer_syntax=ts).study_uid == suid
