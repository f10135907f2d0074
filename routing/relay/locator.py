"""Where is this study? A study-level C-FIND (patient-level without a study) on each backend.

Used for a C-MOVE or C-GET of a study that has no binding (never seen through SynthIQ, or
purged after the cache window): the retrieve goes to the backend that holds it. A plain
SCU, so it uses pynetdicom's threaded AE, on an executor thread (never on the loop).
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom import AE

from routing.dicom import services
from routing.dicom.netopts import client_tls, tune_pynetdicom
from routing.relay.outbound import BackendAddress

logger = logging.getLogger("synthiq.routing")


def _query(study_uid: str, patient_id: str) -> tuple[str, Dataset]:
    identifier = Dataset()
    if study_uid:
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        return services.STUDY_ROOT_FIND, identifier
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = patient_id
    return services.PATIENT_ROOT_FIND, identifier


def holds(backend: BackendAddress, *, calling_ae: str, study_uid: str, patient_id: str, timeout: float) -> bool:
    """Whether the backend finds the study (or the patient). Raises OSError if it cannot be asked."""
    from pynetdicom import evt

    model, identifier = _query(study_uid, patient_id)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(model)
    tls_args = (client_tls(backend.tls), backend.host) if backend.tls else None
    assoc = ae.associate(backend.host, backend.port, ae_title=backend.ae_title, tls_args=tls_args,
                         evt_handlers=[(evt.EVT_CONN_OPEN, tune_pynetdicom)])
    if not assoc.is_established:
        raise OSError(f"association to {backend.id} not established")
    try:
        found = False
        for response, _ in assoc.send_c_find(identifier, model):
            if "Status" not in response:
                raise OSError(f"{backend.id} did not answer the C-FIND")
            if int(response.Status) in (0xFF00, 0xFF01):
                found = True
        return found
    finally:
        if assoc.is_established:
            assoc.release()


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
