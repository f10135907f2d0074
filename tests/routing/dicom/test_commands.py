"""Command sets: the hand-written codec against pydicom's encoder and decoder."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from routing.dicom import commands, status


def _encoded_by_pydicom(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    return buf.getvalue()


def _c_store_rq() -> Dataset:
    ds = Dataset()
    ds.CommandGroupLength = 0
    ds.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.CommandField = 0x0001
    ds.MessageID = 4242
    ds.Priority = 1
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = "1.2.3.4.5"
    ds.MoveOriginatorApplicationEntityTitle = "QRSCP"
    ds.MoveOriginatorMessageID = 77
    return ds


def test_a_c_store_request_is_read_field_by_field():
    command = commands.decode(_encoded_by_pydicom(_c_store_rq()))
    assert command.field == commands.C_STORE_RQ and command.is_request and command.name == "C-STORE"
    assert command.message_id == 4242 and command.has_data_set
    assert command.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert command.sop_instance_uid == "1.2.3.4.5"
    assert command.text(commands.MOVE_ORIGINATOR_AE) == "QRSCP"


def test_synthiqs_own_response_reads_back_in_pydicom():
    from pydicom.filereader import read_dataset

    request = commands.decode(_encoded_by_pydicom(_c_store_rq()))
    raw = commands.response(request, status.BACKEND_UNREACHABLE, comment="backend node-a unreachable " + "x" * 80,
                            offending=[0x0020000D])
    ds = read_dataset(DicomBytesIO(raw), True, True)
    assert ds.CommandField == 0x8001 and ds.MessageIDBeingRespondedTo == 4242
    assert ds.Status == 0xA701 and ds.CommandDataSetType == 0x0101
    assert ds.AffectedSOPInstanceUID == "1.2.3.4.5"
    assert len(ds.ErrorComment) <= 64 and ds.ErrorComment.startswith("backend node-a")
    assert ds.OffendingElement == 0x0020000D
    assert ds.CommandGroupLength == len(raw) - 12


def test_a_mapped_message_id_changes_that_element_only():
    rsp = Dataset()
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.CommandField = 0x8001
    rsp.MessageIDBeingRespondedTo = 9
    rsp.CommandDataSetType = 0x0101
    rsp.Status = 0xB000
    rsp.ErrorComment = "coerced"
    command = commands.decode(_encoded_by_pydicom(rsp))
    again = commands.decode(command.replaced(commands.MESSAGE_ID_RESPONDED_TO, 12))
    assert again.responded_to == 12 and again.status == 0xB000 and again.text(commands.ERROR_COMMENT) == "coerced"


def test_garbage_is_a_command_error():
    import pytest

    for raw in (b"\x00\x00", b"\x08\x00\x00\x00\x04\x00\x00\x00abcd", b"\x00\x00\x00\x01\xff\x00\x00\x00"):
        with pytest.raises(commands.CommandError):
            commands.decode(raw)
