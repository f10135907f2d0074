"""What a backend answers adopt is untrusted: a real pynetdicom C-FIND SCP that answers with
invalid UIDs, counts that are not counts and dates that are not dates. The bad answers are
counted and skipped; the good ones are adopted; nothing invalid reaches the database."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from affinity.models import Binding
from pools.models import Backend, Pool
from tests.harness import free_port

GOOD = ("1.2.840.555.1", "1.2.840.555.2", "1.2.840.555.3")
BAD_UIDS = ("1.2.abc", "1." + "2" * 80, "1..2", "")


def _answer(uid: str, count: str, date: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    ds.NumberOfStudyRelatedInstances = count
    ds.StudyDate = date
    return ds


def _find(event):
    if event.identifier.QueryRetrieveLevel == "IMAGE":  # a count given as nonsense is counted here
        for n in range(2):
            ds = Dataset()
            ds.QueryRetrieveLevel = "IMAGE"
            ds.StudyInstanceUID = event.identifier.StudyInstanceUID
            ds.SeriesInstanceUID = "1.2.840.555.9"
            ds.SOPInstanceUID = f"1.2.840.555.9.{n}"
            yield 0xFF00, ds
        return
    answers = [_answer(GOOD[0], "2", "20240101"), _answer(GOOD[1], "-5", "2024XX01"),
               _answer(GOOD[2], "99999999999", "")]
    answers += [_answer(uid, "1", "20240101") for uid in BAD_UIDS]
    for ds in answers:
        yield 0xFF00, ds  # pending: a match


@pytest.fixture
def hostile(db):
    ae = AE(ae_title="HOSTILE")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, _find)])
    pool = Pool.objects.create(id="main", ae_title="SYNTHIQ", port=1)
    Backend.objects.create(id="hostile", pool=pool, ae_title="HOSTILE", host="127.0.0.1", port=port)
    try:
        yield
    finally:
        server.shutdown()


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")  # pydicom, building the bad answers
def test_invalid_answers_are_counted_and_skipped_and_the_valid_ones_adopted(hostile):
    out = io.StringIO()
    call_command("adopt", "--pool", "main", "--since", "20240101", "--until", "20240101", stdout=out)
    report = out.getvalue()
    assert sorted(Binding.objects.values_list("study_uid", flat=True)) == sorted(GOOD)
    assert f"answers rejected (invalid UIDs): {len(BAD_UIDS)}" in report  # one query without a date answered all
    assert "windows done: 2; not done: 0" in report
