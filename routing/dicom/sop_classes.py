"""The non-storage DICOM services SynthIQ passes through to a pool, by SOP class UID."""

from __future__ import annotations

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

# The switches of a pool's config (Pools[].Services) and the SOP classes each one covers.
SERVICE_CLASSES: dict[str, tuple[str, ...]] = {
    "find": (STUDY_ROOT_FIND, PATIENT_ROOT_FIND),
    "move": (STUDY_ROOT_MOVE, PATIENT_ROOT_MOVE),
    "get": (STUDY_ROOT_GET, PATIENT_ROOT_GET),
    "storage_commitment": (STORAGE_COMMITMENT_PUSH,),
}
PASSED = tuple(uid for uids in SERVICE_CLASSES.values() for uid in uids)

# Query/Retrieve levels and the attribute that identifies one match at each.
LEVEL_KEYS = {
    "PATIENT": 0x00100020,  # Patient ID
    "STUDY": 0x0020000D,  # Study Instance UID
    "SERIES": 0x0020000E,  # Series Instance UID
    "IMAGE": 0x00080018,  # SOP Instance UID
}
