"""The study ledger's questions to backends: study- and instance-level C-FIND on SynthIQ's lean
C-FIND client (routing.dicom.findscu: a query may have tens of thousands of responses), and an
IMAGE-level C-MOVE, both on SynthIQ's DICOM client (routing.dicom.scu). Blocking: called from
management commands and the verifier's own threads, never from an event loop.

Everything a backend answers is untrusted: UIDs are checked with ``uid_problem``, counts
must be non-negative integers, dates real dates; a bad answer is counted and skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from routing.dicom import commands, findscu, scu, sop_classes, status
from routing.dicom.tags import (
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    QUERY_RETRIEVE_LEVEL,
    SERIES_UID,
    SOP_INSTANCE_UID,
    STUDY_DATE,
    STUDY_UID,
)
from routing.dicom.uids import shown, uid_problem

logger = logging.getLogger("synthiq.affinity")

# SOP Instance UIDs named by one C-MOVE at most (the identifier stays a few tens of KB).
MOVE_UIDS_PER_REQUEST = 500
# The largest count a backend may claim for one study (anything above is not believed).
MAX_COUNT = 10_000_000


Unreachable = scu.Unreachable  # the backend could not be asked (no association, or it broke off)
Peer = scu.Peer


@dataclass
class StudyAnswer:
    """One backend's study-level answers: study UID -> (instance count or None, StudyDate)."""

    studies: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    capped: bool = False
    rejected: int = 0


class RateLimit:
    """At most ``per_second`` queries to each backend (a production PACS is not hurt):
    each caller waits its turn on a per-backend schedule."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, backend_id: str) -> None:
        with self._lock:
            now = time.monotonic()
            turn = max(now, self._next.get(backend_id, now))
            self._next[backend_id] = turn + self.interval
        if turn > now:
            time.sleep(turn - now)


# The attributes the ledger asks for and reads back.
STUDY_INSTANCES = NUMBER_OF_STUDY_RELATED_INSTANCES
STUDY_WANTED = frozenset({STUDY_UID, STUDY_DATE, STUDY_INSTANCES})
INSTANCE_WANTED = frozenset({SOP_INSTANCE_UID, SERIES_UID})


def _find(peer: Peer, query: list[tuple[int, str, str]], wanted: frozenset[int], *, calling_ae: str,
          timeout: float) -> Iterator[findscu.Response]:
    """Each response of one Study Root C-FIND; raises Unreachable."""
    return findscu.find(peer, calling_ae=calling_ae, model=sop_classes.STUDY_ROOT_FIND, query=query, wanted=wanted,
                        timeout=timeout)


def _count(value: object) -> int | None:
    """NumberOfStudyRelatedInstances as a backend gave it: None when empty or not a count."""
    if value is None or value == "":
        return None
    try:
        count = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return count if 0 <= count <= MAX_COUNT else None


def date_problem(value: str) -> str | None:
    """Why a DA value is not a date (YYYYMMDD), or None."""
    if len(value) != 8 or not value.isdigit():
        return "not YYYYMMDD"
    try:
        dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return "not a date"
    return None


def find_studies(peer: Peer, *, calling_ae: str, timeout: float, dates: str = "",
                 study_uid: str = "") -> StudyAnswer:
    """Study-level C-FIND: StudyInstanceUID, NumberOfStudyRelatedInstances, StudyDate,
    matching ``dates`` (a DA range, "" for any) or one study. A search that ends in
    0xFE00 (SynthIQ never cancels) was cut short by the backend: ``capped``."""
    query = [(QUERY_RETRIEVE_LEVEL, "CS", "STUDY"), (STUDY_DATE, "DA", dates), (STUDY_UID, "UI", study_uid),
             (STUDY_INSTANCES, "IS", "")]
    answer = StudyAnswer()
    for response in _find(peer, query, STUDY_WANTED, calling_ae=calling_ae, timeout=timeout):
        code, found = response.status, response.values
        if code == status.CANCEL:
            answer.capped = True
        elif code in status.PENDING:
            uid = found.get(STUDY_UID, "")
            problem = uid_problem(uid)
            if problem:
                answer.rejected += 1
                logger.warning("backend=%s answered a study UID %s that is %s: skipped", peer.id, shown(uid), problem)
                continue
            answer.studies[uid] = (_count(found.get(STUDY_INSTANCES)), found.get(STUDY_DATE, "").strip())
        elif code != status.SUCCESS:
            raise Unreachable(f"{peer.id} ended the C-FIND with 0x{code:04X}")
    return answer


def find_instances(peer: Peer, *, calling_ae: str, timeout: float, study_uid: str) -> dict[str, str]:
    """Instance-level C-FIND of one study: SOP Instance UID -> Series Instance UID."""
    query = [(QUERY_RETRIEVE_LEVEL, "CS", "IMAGE"), (STUDY_UID, "UI", study_uid), (SERIES_UID, "UI", ""),
             (SOP_INSTANCE_UID, "UI", "")]
    found: dict[str, str] = {}
    for response in _find(peer, query, INSTANCE_WANTED, calling_ae=calling_ae, timeout=timeout):
        code, answer = response.status, response.values
        if code in status.PENDING:
            sop, series = answer.get(SOP_INSTANCE_UID, ""), answer.get(SERIES_UID, "")
            if uid_problem(sop) or uid_problem(series):
                logger.warning("backend=%s study=%s: an instance answer with UIDs %s / %s skipped", peer.id,
                               study_uid, shown(sop), shown(series))
                continue
            found[sop] = series
        elif code == status.CANCEL:
            raise Unreachable(f"{peer.id} cut the instance list of study {study_uid} short (0xFE00)")
        elif code != status.SUCCESS:
            raise Unreachable(f"{peer.id} ended the instance C-FIND with 0x{code:04X}")
    return found


def move_instances(peer: Peer, *, calling_ae: str, timeout: float, study_uid: str, series_uid: str,
                   sop_uids: list[str], destination_ae: str) -> tuple[int, int]:
    """IMAGE-level C-MOVE of these instances of one series to ``destination_ae``:
    (completed, failed) sub-operations as the backend reports them."""
    completed = failed = 0
    for start in range(0, len(sop_uids), MOVE_UIDS_PER_REQUEST):
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        identifier.SOPInstanceUID = sop_uids[start:start + MOVE_UIDS_PER_REQUEST]
        with scu.associate(peer, calling_ae=calling_ae, timeout=timeout,
                           contexts=[(sop_classes.STUDY_ROOT_MOVE, scu.DATA_SET_SYNTAXES)]) as link:
            final = scu.move(link, sop_classes.STUDY_ROOT_MOVE, identifier, destination_ae)
        completed += final.us(commands.NUMBER_OF_COMPLETED_SUBOPERATIONS) or 0
        failed += final.us(commands.NUMBER_OF_FAILED_SUBOPERATIONS) or 0
        code = final.status
        if code not in (status.SUCCESS, *status.WARNINGS):
            raise Unreachable(f"{peer.id} ended the C-MOVE with 0x{code:04X}")
    return completed, failed
