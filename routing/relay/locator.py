"""Where is this study, or this instance? C-FINDs to the backends.

- A C-MOVE or C-GET of a study with no binding (never seen through SynthIQ, or purged
  after the cache window) goes to the backend a study-level C-FIND (patient-level without
  a study) finds it on.
- Storage commitment (and a report arriving from outside) for instances SynthIQ never
  relayed: the instance locations SynthIQ keeps come first (the caller asks them); for
  the rest, an IMAGE-level C-FIND on a list of SOP Instance UIDs to each healthy backend,
  in batches. That query is relational for a Study Root SCP (no study given); an SCP that
  refuses it is taken as not holding them, said once per backend.

Plain SCUs on SynthIQ's DICOM client (routing.dicom.scu), run on executor threads.
"""

from __future__ import annotations

import logging
import threading
import time

from pydicom.dataset import Dataset

from routing.dicom import scu, sop_classes, uids
from routing.relay.outbound import BackendAddress

logger = logging.getLogger("synthiq.routing")

# SOP Instance UIDs per IMAGE-level C-FIND: a UI value with a list of 200 (at most 65
# bytes each) stays far below the 64 KiB an explicit-VR length field can hold.
INSTANCES_PER_QUERY = 200
_refusals_said: set[str] = set()  # backends whose refusal of the instance query was logged
_said_lock = threading.Lock()


def _query(study_uid: str, patient_id: str) -> tuple[str, Dataset]:
    identifier = Dataset()
    if study_uid:
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        return sop_classes.STUDY_ROOT_FIND, identifier
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = patient_id
    return sop_classes.PATIENT_ROOT_FIND, identifier


def holds(backend: BackendAddress, *, calling_ae: str, study_uid: str, patient_id: str, timeout: float) -> bool:
    """Whether the backend finds the study (or the patient). Raises OSError if it cannot be asked."""
    model, identifier = _query(study_uid, patient_id)
    with scu.associate(backend, calling_ae=calling_ae, contexts=[(model, scu.DATA_SET_SYNTAXES)],
                       timeout=timeout) as link:
        try:
            # Read to the end, within the timeout: the answer is a study or a patient, not a stream.
            return sum(1 for _ in scu.find(link, model, identifier, deadline=time.monotonic() + timeout)) > 0
        except LookupError:
            return False  # a failure status: it found nothing it could give


def locate(backends: list[BackendAddress], *, calling_ae: str, study_uid: str, patient_id: str,
           timeout: float) -> tuple[list[str], list[str]]:
    """(backends that hold it, backends that could not be asked), in the given order."""
    found, silent = [], []
    for backend in backends:
        try:
            if holds(backend, calling_ae=calling_ae, study_uid=study_uid, patient_id=patient_id, timeout=timeout):
                found.append(backend.id)
        except (OSError, RuntimeError, ValueError) as exc:
            logger.warning("locating study=%s on %s failed: %s", study_uid or f"patient {patient_id}", backend.id, exc)
            silent.append(backend.id)
    return found, silent


def instances_held(backend: BackendAddress, sop_instance_uids: list[str], *, calling_ae: str,
                   timeout: float, deadline: float) -> set[str]:
    """Which of ``sop_instance_uids`` the backend holds (IMAGE-level C-FIND, in batches,
    until ``deadline`` on the monotonic clock). Only UIDs that were asked for count: a
    backend's answer naming anything else is ignored. Raises OSError if it cannot be asked;
    a backend that refuses the query holds none of them."""
    asked = set(sop_instance_uids)
    held: set[str] = set()
    with scu.associate(backend, calling_ae=calling_ae, timeout=timeout,
                       contexts=[(sop_classes.STUDY_ROOT_FIND, scu.DATA_SET_SYNTAXES)]) as link:
        for start in range(0, len(sop_instance_uids), INSTANCES_PER_QUERY):
            if time.monotonic() > deadline:
                raise OSError(f"{backend.id}: out of time after {start} of {len(sop_instance_uids)} instance(s)")
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "IMAGE"
            identifier.SOPInstanceUID = sop_instance_uids[start:start + INSTANCES_PER_QUERY]
            try:
                for match in scu.find(link, sop_classes.STUDY_ROOT_FIND, identifier, deadline=deadline):
                    value = str(match.get("SOPInstanceUID", "") or "")
                    if value in asked and uids.uid_problem(value) is None:
                        held.add(value)
            except LookupError as exc:
                with _said_lock:
                    first = backend.id not in _refusals_said
                    _refusals_said.add(backend.id)
                if first:
                    logger.warning("backend %s refuses an IMAGE-level C-FIND on SOP Instance UIDs (%s): instances "
                                   "it holds cannot be found there (said once)", backend.id, exc)
                return held
    return held


def locate_instances(backends: list[BackendAddress], sop_instance_uids: list[str], *, calling_ae: str,
                     timeout: float) -> tuple[dict[str, str], list[str]]:
    """(SOP Instance UID -> the first backend, in the given order, that holds it; backends
    that could not be asked). Bounded: every backend shares one deadline of ``timeout``."""
    where: dict[str, str] = {}
    silent: list[str] = []
    deadline = time.monotonic() + timeout
    for backend in backends:
        wanted = [uid for uid in sop_instance_uids if uid not in where]
        if not wanted or time.monotonic() > deadline:
            break
        try:
            held = instances_held(backend, wanted, calling_ae=calling_ae, timeout=timeout, deadline=deadline)
        except (OSError, RuntimeError, ValueError) as exc:
            logger.warning("locating %d instance(s) on %s failed: %s", len(wanted), backend.id, exc)
            silent.append(backend.id)
            continue
        where.update((uid, backend.id) for uid in wanted if uid in held)
    return where, silent
