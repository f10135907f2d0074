"""The background verification as several hosts run it, against a real Orthanc: each study
is verified once however many hosts try (the lease), a silent backend postpones a study
rather than failing it, and only quiet studies are verified."""

from __future__ import annotations

import datetime as dt
import os
import threading

import pytest

from affinity.bindings import Bindings
from affinity.models import Binding
from pools.config import ReconciliationConfig
from pools.models import Backend, Pool
from routing.simulators.synthetic import write_study
from routing.verifier import verification_round
from tests.harness import Cluster, clean_database, free_port, send_files, set_health, start_orthanc

pytestmark = pytest.mark.slow
QUIET = ReconciliationConfig(QuietSeconds=0.5)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    cluster = Cluster(tmp=tmp_path_factory.mktemp("hosts"), env=dict(os.environ))
    try:
        yield start_orthanc(cluster, name="o", DicomAet="ORTHANC",
                            DicomModalities={"synthiq": ["SYNTHIQ", "127.0.0.1", 104]}), cluster.tmp
    finally:
        cluster.stop_all()


@pytest.fixture
def pool(db, orthanc):
    clean_database()
    node, tmp = orthanc
    p = Pool.objects.create(id="main", ae_title="SYNTHIQ", port=1)
    Backend.objects.create(id="o", pool=p, ae_title="ORTHANC", host="127.0.0.1", port=node.dicom_port)
    Backend.objects.create(id="gone", pool=p, ae_title="GONE", host="127.0.0.1", port=free_port())  # nothing listens
    set_health(["o", "gone"])
    return node, tmp


def relayed(node, tmp, name: str, *, backend: str = "o", count: int = 2) -> str:
    """A study as runproxy records it: bound, its instances acknowledged (and stored on the Orthanc)."""
    suid, files = write_study(tmp / name, count=count)
    assert [s.status for s in send_files(node.dicom_port, files, called_ae="ORTHANC")] == [0] * count
    bindings = Bindings(window_hours=96)
    bindings.claim(("main", suid), backend)
    for path in files:
        bindings.note_instance(pool_id="main", sop_instance_uid=path.stem, backend_id=backend, study_uid=suid)
    bindings.flush()
    Binding.objects.filter(study_uid=suid).update(last_seen_utc=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    return suid


@pytest.mark.postgres
def test_two_hosts_verifying_at_once_verify_each_study_once(pool):
    node, tmp = pool
    studies = [relayed(node, tmp, f"s{n}") for n in range(6)]
    results: list[int] = []

    def host() -> None:
        results.append(verification_round(pool_ids=["main"], settings=QUIET, heartbeat_timeout=600))

    hosts = [threading.Thread(target=host) for _ in range(2)]
    for t in hosts:
        t.start()
    for t in hosts:
        t.join(60)
    assert sum(results) == len(studies)  # one verdict per study, whichever host took it
    assert set(Binding.objects.values_list("verdict", flat=True)) == {"whole"}
    assert verification_round(pool_ids=["main"], settings=QUIET, heartbeat_timeout=600) == 0  # nothing due now


def test_a_silent_bound_backend_postpones_the_study_and_the_others_go_on(pool):
    node, tmp = pool
    ok = relayed(node, tmp, "ok")
    silent = relayed(node, tmp, "silent", backend="gone")
    assert verification_round(pool_ids=["main"], settings=QUIET, heartbeat_timeout=600) == 1
    rows = {b.study_uid: b for b in Binding.objects.all()}
    assert rows[ok].verdict == "whole"
    assert (rows[silent].verdict, rows[silent].verified_utc) == ("unverified", None)
    assert rows[silent].lease_until_utc > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)  # tried again later
    assert verification_round(pool_ids=["main"], settings=QUIET, heartbeat_timeout=600) == 0


def test_a_study_still_receiving_is_not_verified_until_quiet(pool):
    node, tmp = pool
    suid = relayed(node, tmp, "busy")
    Binding.objects.filter(study_uid=suid).update(last_seen_utc=dt.datetime.now(dt.UTC))
    assert verification_round(pool_ids=["main"], settings=ReconciliationConfig(QuietSeconds=60),
                              heartbeat_timeout=600) == 0
    assert Binding.objects.get(study_uid=suid).verdict == "unverified"


def test_celery_beat_runs_the_same_round_on_its_schedule(pool):
    from routing.tasks import ledger_verify_due
    from synthiq_project.celery import app

    node, tmp = pool
    suid = relayed(node, tmp, "beat")
    Binding.objects.filter(study_uid=suid).update(last_seen_utc=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    ledger_verify_due.apply()  # the task body as a worker runs it (default Reconciliation: quiet 300 s)
    assert Binding.objects.get(study_uid=suid).verdict == "whole"
    app.finalize()
    entry = app.conf.beat_schedule["ledger-verification"]
    assert entry["task"] == "routing.ledger_verify_due" and entry["options"]["expires"] == entry["schedule"]


def test_a_round_starts_no_study_past_its_budget(pool):
    node, tmp = pool
    relayed(node, tmp, "late")
    assert verification_round(pool_ids=["main"], settings=QUIET, heartbeat_timeout=600, budget_seconds=0) == 0
    assert Binding.objects.get().verdict == "unverified"
    assert verification_round(pool_ids=["main"], settings=QUIET, heartbeat_timeout=600, budget_seconds=5) == 1
