"""The non-storage DICOM services SynthIQ passes through to a pool, by SOP class UID."""

from __future__ import annotations

from routing.dicom import tags

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP instance
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
LEVEL_KEYS = {"PATIENT": tags.PATIENT_ID, "STUDY": tags.STUDY_UID, "SERIES": tags.SERIES_UID,
              "IMAGE": tags.SOP_INSTANCE_UID}
