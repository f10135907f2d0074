"""DIMSE command sets (PS3.7 9.3, E.1): always Implicit VR Little Endian, group 0000.

A command set is a handful of short elements, so it is decoded by hand (about 2 µs,
against pydicom's 20) into raw values kept by tag, and re-encoded only when SynthIQ
writes its own response or must change one element of a relayed one. Relayed commands
otherwise travel as the bytes they arrived as.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ELEMENT = struct.Struct("<HHL")  # group, element, value length
US = struct.Struct("<H")
UL = struct.Struct("<L")

# Command Field values (PS3.7 E.1).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_GET_RQ, N_GET_RSP = 0x0110, 0x8110
N_SET_RQ, N_SET_RSP = 0x0120, 0x8120
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
N_CREATE_RQ, N_CREATE_RSP = 0x0140, 0x8140
N_DELETE_RQ, N_DELETE_RSP = 0x0150, 0x8150
C_CANCEL_RQ = 0x0FFF

NAMES = {
    C_STORE_RQ: "C-STORE", C_GET_RQ: "C-GET", C_FIND_RQ: "C-FIND", C_MOVE_RQ: "C-MOVE", C_ECHO_RQ: "C-ECHO",
    N_EVENT_REPORT_RQ: "N-EVENT-REPORT", N_GET_RQ: "N-GET", N_SET_RQ: "N-SET", N_ACTION_RQ: "N-ACTION",
    N_CREATE_RQ: "N-CREATE", N_DELETE_RQ: "N-DELETE", C_CANCEL_RQ: "C-CANCEL",
}

# Tags (group 0000) as 32-bit integers.
GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS_UID = 0x00000002
REQUESTED_SOP_CLASS_UID = 0x00000003
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_RESPONDED_TO = 0x00000120
MOVE_DESTINATION = 0x00000600
PRIORITY = 0x00000700
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
OFFENDING_ELEMENT = 0x00000901
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE_UID = 0x00001000
REQUESTED_SOP_INSTANCE_UID = 0x00001001
EVENT_TYPE_ID = 0x00001002
ACTION_TYPE_ID = 0x00001008
NUMBER_OF_REMAINING_SUBOPERATIONS = 0x00001020
NUMBER_OF_COMPLETED_SUBOPERATIONS = 0x00001021
NUMBER_OF_FAILED_SUBOPERATIONS = 0x00001022
NUMBER_OF_WARNING_SUBOPERATIONS = 0x00001023
MOVE_ORIGINATOR_AE = 0x00001030
MOVE_ORIGINATOR_ID = 0x00001031

NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows

# How each element SynthIQ writes is encoded.
_US_TAGS = frozenset({COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED_TO, PRIORITY, DATA_SET_TYPE, STATUS,
                      EVENT_TYPE_ID, ACTION_TYPE_ID, MOVE_ORIGINATOR_ID})
_UI_TAGS = frozenset({AFFECTED_SOP_CLASS_UID, REQUESTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID,
                      REQUESTED_SOP_INSTANCE_UID})
ERROR_COMMENT_MAX = 64  # LO


class CommandError(ValueError):
    """A command set that cannot be read."""


@dataclass(slots=True)
class Command:
    values: dict[int, bytes]  # tag -> raw value bytes, in the order they came
    raw: bytes

    def us(self, tag: int) -> int | None:
        value = self.values.get(tag)
        if value is None or len(value) < 2:
            return None
        return int(US.unpack_from(value)[0])

    def text(self, tag: int) -> str:
        value = self.values.get(tag)
        return value.decode("latin-1").rstrip("\x00 ") if value else ""

    @property
    def field(self) -> int:
        return self.us(COMMAND_FIELD) or 0

    @property
    def name(self) -> str:
        return NAMES.get(self.field & 0x7FFF, f"command 0x{self.field:04X}")

    @property
    def is_request(self) -> bool:
        return not self.field & 0x8000

    @property
    def message_id(self) -> int | None:
        return self.us(MESSAGE_ID)

    @property
    def responded_to(self) -> int | None:
        return self.us(MESSAGE_ID_RESPONDED_TO)

    @property
    def status(self) -> int | None:
        return self.us(STATUS)

    @property
    def has_data_set(self) -> bool:
        return self.us(DATA_SET_TYPE) not in (None, NO_DATA_SET)

    @property
    def sop_class_uid(self) -> str:
        return self.text(AFFECTED_SOP_CLASS_UID) or self.text(REQUESTED_SOP_CLASS_UID)

    @property
    def sop_instance_uid(self) -> str:
        return self.text(AFFECTED_SOP_INSTANCE_UID) or self.text(REQUESTED_SOP_INSTANCE_UID)

    def replaced(self, tag: int, value: int) -> bytes:
        """The command set again with one US element changed (e.g. a mapped Message ID)."""
        values = dict(self.values)
        values[tag] = US.pack(value)
        return _encode_raw(values)


def response_mismatch(request: Command, response: Command) -> str | None:
    """Why ``response`` does not answer ``request`` (another Message ID; or an Affected SOP
    Class / SOP Instance UID that is present and differs from the request's), or None.
    Worded to follow "backend X"."""
    if response.responded_to != request.message_id:
        return f"answered message {response.responded_to}, not {request.message_id}"
    for tag, name, asked in ((AFFECTED_SOP_CLASS_UID, "SOP Class", request.sop_class_uid),
                             (AFFECTED_SOP_INSTANCE_UID, "SOP Instance", request.sop_instance_uid)):
        said = response.text(tag)
        if said and asked and said != asked:
            return f"answered for another {name}"
    return None


def decode(raw: bytes | memoryview) -> Command:
    data = bytes(raw)
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < ELEMENT.size:
            raise CommandError(f"command set ends inside an element header at byte {pos}")
        group, element, length = ELEMENT.unpack_from(data, pos)
        pos += ELEMENT.size
        if group != 0x0000:
            raise CommandError(f"element ({group:04X},{element:04X}) outside group 0000 in a command set")
        if length > end - pos:
            raise CommandError(f"element (0000,{element:04X}) of length {length} overruns the command set")
        values[element] = data[pos:pos + length]
        pos += length
    if COMMAND_FIELD not in values:
        raise CommandError("command set without a Command Field (0000,0100)")
    return Command(values, data)


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _value(tag: int, value: int | str | bytes | list[int]) -> bytes:
    if isinstance(value, bytes):
        return value
    if tag in _US_TAGS:
        assert isinstance(value, int)
        return US.pack(value)
    if tag == OFFENDING_ELEMENT:
        assert isinstance(value, list)
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in value)
    assert isinstance(value, str)
    return _pad(value.encode("latin-1", "replace"), b"\x00" if tag in _UI_TAGS else b" ")


def _encode_raw(values: dict[int, bytes]) -> bytes:
    body = b"".join(ELEMENT.pack(0, tag, len(v)) + v for tag, v in sorted(values.items()) if tag != GROUP_LENGTH)
    return ELEMENT.pack(0, GROUP_LENGTH, 4) + UL.pack(len(body)) + body


def encode(elements: dict[int, int | str | bytes | list[int]]) -> bytes:
    """A command set from tag -> value (US ints, UID/AE/LO strings, AT lists), with its
    group length; elements are written in tag order as PS3.5 requires."""
    return _encode_raw({tag: _value(tag, v) for tag, v in elements.items() if v is not None})


def response(request: Command, status: int, *, comment: str = "", offending: list[int] | None = None) -> bytes:
    """SynthIQ's own response to ``request`` (no data set): the Affected SOP Class and
    Instance of the request, its Message ID, the status and an Error Comment."""
    elements: dict[int, int | str | bytes | list[int]] = {
        AFFECTED_SOP_CLASS_UID: request.values.get(AFFECTED_SOP_CLASS_UID)
        or request.values.get(REQUESTED_SOP_CLASS_UID, b""),
        COMMAND_FIELD: request.field | 0x8000,
        MESSAGE_ID_RESPONDED_TO: request.message_id or 0,
        DATA_SET_TYPE: NO_DATA_SET,
        STATUS: status,
    }
    instance = request.values.get(AFFECTED_SOP_INSTANCE_UID) or request.values.get(REQUESTED_SOP_INSTANCE_UID)
    if instance:
        elements[AFFECTED_SOP_INSTANCE_UID] = instance
    if ACTION_TYPE_ID in request.values:  # N-ACTION-RSP repeats the action (PS3.7 10.1.4)
        elements[ACTION_TYPE_ID] = request.values[ACTION_TYPE_ID]
    if EVENT_TYPE_ID in request.values:  # and N-EVENT-REPORT-RSP the event (PS3.7 10.1.1)
        elements[EVENT_TYPE_ID] = request.values[EVENT_TYPE_ID]
    if comment:
        elements[ERROR_COMMENT] = comment[:ERROR_COMMENT_MAX]
    if offending:
        elements[OFFENDING_ELEMENT] = offending
    return encode(elements)


def event_report(*, message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type: int) -> bytes:
    """An N-EVENT-REPORT-RQ command set; a data set (the event information) follows."""
    return encode({AFFECTED_SOP_CLASS_UID: sop_class_uid, COMMAND_FIELD: N_EVENT_REPORT_RQ, MESSAGE_ID: message_id,
                   DATA_SET_TYPE: 0x0000, AFFECTED_SOP_INSTANCE_UID: sop_instance_uid, EVENT_TYPE_ID: event_type})
