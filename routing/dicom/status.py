"""DIMSE status codes: the ones SynthIQ returns itself, and how any status is classed.

Every status a backend returns reaches the modality verbatim; these are the only codes
SynthIQ makes up, each with an Error Comment naming the backend or the cause.
"""

from __future__ import annotations

SUCCESS = 0x0000
# Warnings that still mean "stored" (PS3.4 B.2.3): coercion, elements discarded, mismatch.
WARNINGS = frozenset({0xB000, 0xB006, 0xB007})
PENDING = frozenset({0xFF00, 0xFF01})
CANCEL = 0xFE00

# C-STORE (and C-ECHO) failures SynthIQ returns itself.
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources - no enabled backend in the pool
BACKEND_UNREACHABLE = 0xA701  # Refused: Out of Resources - backend unreachable / rejected the association
BACKEND_NO_RESPONSE = 0xA702  # Refused: Out of Resources - backend aborted, reset or timed out mid-operation
SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: SOP class / transfer syntax not accepted by the backend
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand - header unreadable or no Study Instance UID
UID_BEYOND_HOLD = 0xC001  # Error: Cannot understand - Study Instance UID not within the bytes SynthIQ holds


# Other services' own failures (PS3.4 C.4, B.2): SynthIQ answers with these when it, not
# the backend, cannot do the operation.
FIND_OUT_OF_RESOURCES = 0xA700  # C-FIND: Refused: Out of Resources
RETRIEVE_UNABLE_TO_COUNT = 0xA701  # C-MOVE/C-GET: Refused: Out of Resources - unable to calculate matches
RETRIEVE_UNABLE_TO_PERFORM = 0xA702  # C-MOVE/C-GET: Refused: Out of Resources - unable to perform sub-operations
PROCESSING_FAILURE = 0x0110  # N-ACTION: Processing failure
RESOURCE_LIMITATION = 0x0213  # N-ACTION: Resource limitation
NO_SUCH_OBJECT_INSTANCE = 0x0112  # a Failure Reason in a storage commitment result
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # C-FIND/C-MOVE/C-GET: Identifier does not match SOP Class (an invalid UID key)
INVALID_ARGUMENT_VALUE = 0x0115  # N-ACTION: Invalid argument value (an invalid referenced UID)
UNRECOGNIZED_OPERATION = 0x0211  # Refused: the operation is not supported here


def is_success(status: int) -> bool:
    """Stored: success, or a warning that PS3.4 counts as stored."""
    return status == SUCCESS or status in WARNINGS


def status_class(status: int) -> str:
    """The label metrics and counters use: success, warning, or the failure's high byte."""
    if status == SUCCESS:
        return "success"
    if status in WARNINGS:
        return "warning"
    return f"0x{status >> 8:02X}xx"
