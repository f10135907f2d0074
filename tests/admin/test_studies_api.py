"""The study ledger as operators read it: ``GET /api/studies/<uid>`` (the exact shape),
``GET /api/studies?verdict=missing|split`` (paged), ``synthiq_study_verdicts`` in /metrics."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from affinity.bindings import Bindings
from affinity.services import binding_verdict_record, bindings_mark_adopted
from pools.models import Backend, Pool
from tests.admin.support import api_user

WHEN = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC)


@pytest.fixture
def ledger(db):
    for pool_id, port in (("main", 11112), ("other", 11113)):
        pool = Pool.objects.create(id=pool_id, ae_title="SYNTHIQ", port=port)
        for n in range(2):
            Backend.objects.create(id=f"{pool_id}-{n}", pool=pool, ae_title=f"N{n}", host="h", port=104)
    bindings = Bindings(window_hours=96)
    for pool_id, study, backend in (("main", "1.2.1", "main-0"), ("other", "1.2.1", "other-1"),
                                    ("main", "1.2.2", "main-1"), ("main", "1.2.3", "main-0"),
                                    ("main", "1.2.4", "main-0")):
        bindings.claim((pool_id, study), backend)
    for n in range(3):
        bindings.note_instance(pool_id="main", sop_instance_uid=f"1.2.1.{n}", backend_id="main-0", study_uid="1.2.1")
    bindings.flush()
    binding_verdict_record(pool_id="main", study_uid="1.2.1", backend_id="main-0", verdict="missing",
                           held={"main-0": 2}, now=WHEN)
    binding_verdict_record(pool_id="main", study_uid="1.2.2", backend_id="main-1", verdict="split",
                           held={"main-0": 1, "main-1": 4}, now=WHEN)
    binding_verdict_record(pool_id="main", study_uid="1.2.3", backend_id="main-0", verdict="whole",
                           held={"main-0": 1}, now=WHEN)
    bindings_mark_adopted(pool_id="main", study_uids=["1.2.4"], backend_id="main-0")
    return Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Token {api_user().token}")


def test_a_study_reads_its_verdict_per_pool_in_the_documented_shape(ledger):
    body = ledger.get("/api/studies/1.2.1").json()
    assert body == {"study_uid": "1.2.1", "pools": [
        {"pool": "main", "backend": "main-0", "verdict": "missing", "acknowledged": 3, "held": {"main-0": 2},
         "verified_utc": "2026-12-01T10:30:00Z"},
        {"pool": "other", "backend": "other-1", "verdict": "unverified", "acknowledged": 0, "held": {},
         "verified_utc": None}]}
    assert ledger.get("/api/studies/1.2.9").status_code == 404
    assert Client(HTTP_HOST="127.0.0.1").get("/api/studies/1.2.1").status_code in (401, 403)


def test_the_exceptions_page_through_missing_and_split(ledger):
    both = ledger.get("/api/studies").json()
    assert [(r["study_uid"], r["verdict"]) for r in both["results"]] == [("1.2.1", "missing"), ("1.2.2", "split")]
    assert both["count"] == 2
    split = ledger.get("/api/studies?verdict=split&page_size=1").json()
    assert split["count"] == 1 and split["results"] == [
        {"study_uid": "1.2.2", "pool": "main", "backend": "main-1", "verdict": "split", "acknowledged": 0,
         "held": {"main-0": 1, "main-1": 4}, "verified_utc": "2026-12-01T10:30:00Z"}]
    assert ledger.get("/api/studies?verdict=whole").status_code == 400


def test_metrics_count_the_verdicts_of_each_pool_from_zero(ledger):
    text = Client(HTTP_HOST="127.0.0.1").get("/metrics").content.decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "synthiq_study_verdicts"]
    got = {(s.labels["pool"], s.labels["verdict"]): s.value for s in family.samples}
    assert got == {("main", "missing"): 1, ("main", "split"): 1, ("main", "whole"): 1, ("main", "unverified"): 1,
                   ("other", "missing"): 0, ("other", "split"): 0, ("other", "whole"): 0, ("other", "unverified"): 1}
