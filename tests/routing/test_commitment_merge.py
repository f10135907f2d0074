"""One storage commitment result out of several backends' reports (pure functions)."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from routing.relay.commitment import Report, Unreadable, event_information, merge, read_information

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _bytes(ds) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_every_requested_instance_gets_exactly_one_outcome():
    requested = [(CT, "1.1"), (CT, "1.2"), (CT, "1.3"), (CT, "1.4")]
    reports = [Report("node-a", [(CT, "1.1"), (CT, "9.9")], []),  # 9.9 was never asked for: ignored
               Report("node-b", [], [(CT, "1.2", 0x0110)])]
    committed, failed = merge(requested, reports, unheld={"1.3"})
    assert committed == [(CT, "1.1")]
    assert failed == [(CT, "1.2", 0x0110), (CT, "1.3", 0x0112), (CT, "1.4", 0x0110)]  # 1.4: nobody reported


def test_a_result_written_and_read_back_is_the_same():
    ds = event_information("2.25.1", [(CT, "1.1")], [(CT, "1.2", 0x0112)])
    info = read_information(_bytes(ds), EXPLICIT)
    assert (info.transaction_uid, info.references, info.failed) == ("2.25.1", [(CT, "1.1")], [(CT, "1.2", 0x0112)])


@pytest.mark.parametrize("uid, code", [("1.2.x", 0x0115), ("1." + "2" * 70, 0x0115)])
def test_an_invalid_uid_in_a_report_is_refused(uid, code):
    ds = event_information("2.25.1", [(CT, uid)], [])
    with pytest.raises(Unreadable) as exc:
        read_information(_bytes(ds), EXPLICIT)
    assert exc.value.status == code


def test_garbage_is_unreadable_not_a_crash():
    with pytest.raises(Unreadable) as exc:
        read_information(b"\x08\x00\x18\x00garbage", EXPLICIT)
    assert exc.value.status == 0x0110
