"""The Part 10 identity scan of a STOW-RS part: meta, then the Study Instance UID, bounded."""

from __future__ import annotations

import pytest
from pydicom.uid import ImplicitVRLittleEndian

from routing.dicom.part10 import Part10Error, Part10Scanner
from routing.simulators.synthetic import write_study


def _feed(data: bytes, step: int):
    scanner = Part10Scanner()
    for i in range(0, len(data), step):
        found = scanner.feed(data[i:i + step])
        if found is not None:
            return found, i + step
    return scanner.feed(b"", last=True), len(data)


@pytest.mark.parametrize("step", [1, 7, 200, 1 << 20])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", ImplicitVRLittleEndian])
def test_the_identity_is_read_from_the_first_bytes_whatever_the_chunking(tmp_path, step, syntax):
    suid, [path] = write_study(tmp_path, count=1, rows=128, columns=128, transfer_syntax=syntax)
    data = path.read_bytes()
    identity, used = _feed(data, step)
    assert identity.study_uid == suid and identity.transfer_syntax == syntax
    assert identity.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2" and path.name.startswith(identity.sop_instance_uid)
    assert used < 4096 or step > 4096  # known long before the pixel data


def test_not_a_part10_file_is_refused_at_the_magic():
    with pytest.raises(Part10Error, match="no DICM prefix"):
        Part10Scanner().feed(b"\0" * 128 + b"NOPE" + b"\0" * 100)


def test_a_meta_group_past_its_bound_is_refused(tmp_path):
    scanner = Part10Scanner(meta_limit=1024)
    # (0002,0001) OB with a declared length of 1 MB: refused before it is held.
    hostile = b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\0\0" + (1 << 20).to_bytes(4, "little")
    with pytest.raises(Part10Error, match="longer than 1024"):
        scanner.feed(hostile)


def test_a_file_ending_in_its_meta_or_without_a_study_uid_is_an_error(tmp_path):
    _, [path] = write_study(tmp_path, count=1)
    data = path.read_bytes()
    with pytest.raises(Part10Error, match="ends within"):
        Part10Scanner().feed(data[:150], last=True)
    meta_end = data.index(b"\x08\x00")  # the first data set element, group 0008
    with pytest.raises(Part10Error, match="Study Instance UID"):
        Part10Scanner().feed(data[:meta_end] + b"\x08\x00\x16\x00UI\x04\x001.2\0", last=True)
