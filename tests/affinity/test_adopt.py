"""``manage.py adopt`` against three real Orthanc nodes holding studies stored straight into
them (as an L4 balancer leaves a pool): one study whole on one node, one split over two, one
undated, one already bound by live traffic."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import call_command

from affinity.models import Adoption, AdoptionWindow, Binding
from affinity.services import adoption_start, adoption_window_done, binding_claim
from routing.simulators.synthetic import write_study
from tests.affinity.ledger_peers import dated_study, start_ledger

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adopt")
    ledger = start_ledger(tmp)
    studies = {}
    try:
        studies["whole"], _ = dated_study(tmp / "whole", count=2, date="20240105")
        ledger.store_direct("o2", _)
        studies["split"], split = dated_study(tmp / "split", count=4, date="20240320")
        ledger.store_direct("o1", split[:3])
        ledger.store_direct("o2", split[3:])
        studies["undated"], undated = dated_study(tmp / "undated", count=1)
        ledger.store_direct("o0", undated)
        studies["live"], live = dated_study(tmp / "live", count=1, date="20240601")
        ledger.store_direct("o1", live)
        yield ledger, studies
    finally:
        ledger.cluster.stop_all()


def adopt(*args: str) -> str:
    out = io.StringIO()
    call_command("adopt", "--pool", "main", *args, stdout=out)
    return out.getvalue()


@pytest.mark.postgres
def test_adopt_binds_each_study_where_it_lives_and_keeps_live_bindings(ledger, tmp_path):
    ledger, studies = ledger
    Binding.objects.all().delete()
    Adoption.objects.all().delete()
    binding_claim(pool_id="main", study_uid=studies["live"], backend_id="o0", now=dt.datetime.now(dt.UTC))

    dry = adopt("--dry-run")
    assert "(dry run: nothing written)" in dry and "would be bound: 3; already bound and kept: 1" in dry, dry
    assert list(Binding.objects.values_list("study_uid", "backend_id")) == [(studies["live"], "o0")]
    assert not Adoption.objects.exists()

    report = adopt()
    assert "bound: 3; already bound and kept: 1; on several backends: 1 (1 split)" in report, report
    assert f"study {studies['live']} is bound to o0 (kept); the backends suggest o1" in report
    rows = {b.study_uid: b for b in Binding.objects.all()}
    assert {s: (rows[uid].backend_id, rows[uid].adopted) for s, uid in studies.items()} == {
        "whole": ("o2", True), "split": ("o1", True), "undated": ("o0", True), "live": ("o0", False)}
    split = rows[studies["split"]]
    assert (split.verdict, split.held) == ("split", {"o1": 3, "o2": 1})
    assert rows[studies["whole"]].verdict == "unverified"
    assert Adoption.objects.get().finished_utc is not None

    # A late instance of the adopted study, sent through SynthIQ, joins it on its node.
    _, late = write_study(tmp_path / "late", count=1, study_uid=studies["whole"])
    ledger.via_synthiq(late)
    assert len(ledger.sops("o2", studies["whole"])) == 3
    assert not ledger.sops("o0", studies["whole"]) and not ledger.sops("o1", studies["whole"])


def test_an_interrupted_adopt_resumes_with_the_windows_not_done(ledger):
    """A run stopped after its first window (as a killed one leaves the ledger: the adoption
    unfinished, that window recorded) is resumed by the same command: the window done is not
    adopted again, the rest of the range and the undated studies are, from one query."""
    ledger, studies = ledger
    Binding.objects.all().delete()
    Adoption.objects.all().delete()
    now = dt.datetime.now(dt.UTC)
    adoption = adoption_start(pool_id="main", since=dt.date(2024, 1, 1), until=now.date(), since_arg="20240101",
                              until_arg="", now=now)
    adoption_window_done(adoption_id=adoption.id, first=dt.date(2024, 1, 1), last=dt.date(2024, 3, 31),
                         undated=False, studies=2, capped=False, now=now)

    report = adopt("--since", "20240101")
    assert "resuming the adoption of pool main" in report and "(1 windows done)" in report, report
    assert "windows done: 2; not done: 0" in report  # the rest of the range, and the undated studies
    bound = dict(Binding.objects.values_list("study_uid", "backend_id"))
    assert bound == {studies["undated"]: "o0", studies["live"]: "o1"}  # whole and split: in the window done
    windows = AdoptionWindow.objects.filter(adoption=adoption, undated=False).order_by("first")
    assert [(w.first, w.last, w.studies) for w in windows] == [
        (dt.date(2024, 1, 1), dt.date(2024, 3, 31), 2), (dt.date(2024, 4, 1), now.date(), 1)]
    assert Adoption.objects.get().finished_utc is not None


def test_a_csv_export_is_adopted_and_its_bad_rows_are_reported_and_skipped(ledger, tmp_path):
    ledger, _ = ledger
    Binding.objects.all().delete()
    export = tmp_path / "export.csv"
    export.write_text("StudyInstanceUID,backend\n1.2.840.99.1,o1\nnot-a-uid,o1\n1.2.840.99.2,nowhere\n"
                      "1.2.840.99.3,o2,extra\n1.2.840.99.4,o2\n")
    report = adopt("--csv", str(export))
    assert dict(Binding.objects.values_list("study_uid", "backend_id")) == {"1.2.840.99.1": "o1",
                                                                            "1.2.840.99.4": "o2"}
    assert "export.csv line 3: StudyInstanceUID 'not-a-uid' is not digits and dots" in report
    assert "export.csv line 4: backend 'nowhere' is not an enabled backend of pool main" in report
    assert "export.csv line 5: expected 2 fields, got 3" in report


def test_a_capped_answer_halves_the_date_window_until_no_cap_is_hit(ledger, tmp_path):
    from pools.models import Backend, Pool
    from tests.harness import send_files, start_orthanc

    ledger, _ = ledger
    capped = start_orthanc(ledger.cluster, name="capped", DicomAet="CAPPED", LimitFindResults=2,
                           DicomModalities={"synthiq": ["SYNTHIQ", "127.0.0.1", 104]})
    dates = ["20230110", "20230111", "20230502", "20230901", "20231231"]
    uids = []
    for n, date in enumerate(dates):
        uid, files = dated_study(tmp_path / f"c{n}", count=1, date=date)
        assert send_files(capped.dicom_port, files, called_ae="CAPPED", calling_ae="STORESCU")[0].status == 0
        uids.append(uid)
    pool = Pool.objects.create(id="capped", ae_title="SYNTHIQ", port=1)
    Backend.objects.create(id="cap", pool=pool, ae_title="CAPPED", host="127.0.0.1", port=capped.dicom_port)
    out = io.StringIO()
    call_command("adopt", "--pool", "capped", "--since", "20230101", "--until", "20231231", stdout=out)
    report = out.getvalue()
    assert set(Binding.objects.filter(pool_id="capped").values_list("study_uid", flat=True)) == set(uids)
    windows = AdoptionWindow.objects.filter(adoption__pool_id="capped", undated=False).order_by("first")
    assert all(w.studies <= 2 and not w.capped for w in windows)
    assert [w.first for w in windows][0] == dt.date(2023, 1, 1) and windows.last().last == dt.date(2023, 12, 31)
    assert "the undated query was capped" in report  # five studies, a cap of two: said, not hidden


def test_an_answer_of_exactly_the_known_cap_is_taken_for_a_capped_one(ledger):
    """A PACS that caps a search by ending it with Success after N matches, not 0xFE00: given
    ``--find-limit N``, adopt treats an answer of N studies as capped and walks the StudyDate
    windows (o1 and o2 hold two studies each here); without it, the query without a date is
    enough."""
    ledger, studies = ledger
    for find_limit in (None, "2"):
        Binding.objects.all().delete()
        Adoption.objects.all().delete()
        report = adopt("--since", "20240101", "--until", "20241231",
                       *(("--find-limit", find_limit) if find_limit else ()))
        assert set(Binding.objects.filter(pool_id="main").values_list("study_uid", flat=True)) == set(
            studies.values()), report
        dated = AdoptionWindow.objects.filter(adoption__pool_id="main", undated=False)
        if find_limit is None:  # the whole range done from the one answer
            assert dated.count() == 1 and "capped" not in report, list(dated.values())
        else:  # halved until no backend answers two
            assert dated.count() > 1 and all(w.studies < 2 and not w.capped for w in dated), list(dated.values())
            assert "the undated query was capped" in report, report
