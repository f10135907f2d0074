"""The data set attributes SynthIQ reads or writes itself, by name: (group << 16) | element.

Defined once here for the header scan, the Query/Retrieve fan-out, the study ledger's
queries, the simulated backend's index and the DICOMweb front door. A command set's own
attributes (group 0000) are in ``commands``; the File Meta group's (0002) in ``part10``.
"""

from __future__ import annotations

SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_DATE = 0x00080020
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
MODALITY = 0x00080060
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
STUDY_UID = 0x0020000D  # Study Instance UID
SERIES_UID = 0x0020000E  # Series Instance UID
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
