"""What runproxy keeps of failed operations and rejected associations for the dashboard:
bounded in memory and in the database, added up across processes, peer text made safe to
keep. Telemetry publishes to the real test database, as runproxy's publishing thread does."""

from __future__ import annotations

import pytest

from routing.models import FailedOperation, RejectedAssociation
from routing.telemetry import FAILURES_KEPT, REJECTIONS_PENDING, Telemetry

pytestmark = pytest.mark.postgres


@pytest.fixture
def pool(db):
    from pools.models import Pool

    return Pool.objects.create(id="main", ae_title="SYNTHIQ", port=11112)


def _failed(t: Telemetry, n: int, **overrides) -> None:
    fields = dict(pool_id="main", calling_ae="CT1", source_ip="10.0.0.7", study_uid=f"1.2.3.{n}",
                  sop_instance_uid=f"1.2.3.{n}.1", backend_id="node-a", status=0xA701,
                  comment="backend node-a unreachable", by_backend=False)
    t.store_failed(**(fields | overrides))


def _publish(t: Telemetry) -> None:
    t.publish(extra={}, listeners=[])


def test_only_the_newest_failures_are_kept(pool):
    t = Telemetry(process_id="test:1")
    for n in range(FAILURES_KEPT + 100):
        _failed(t, n)
    _publish(t)
    kept = list(FailedOperation.objects.values_list("study_uid", flat=True))
    assert len(kept) == FAILURES_KEPT
    assert kept[0] == f"1.2.3.{FAILURES_KEPT + 99}"  # newest first
    assert "1.2.3.0" not in kept and "1.2.3.99" not in kept


def test_peer_text_is_kept_printable_and_cut_and_an_invalid_uid_not_at_all(pool):
    t = Telemetry(process_id="test:1")
    _failed(t, 1, study_uid="1.2.3.<script>", calling_ae="EVIL\x1b[31mAE_TOO_LONG_FOR_A_TITLE",
            comment="disk\x00full\n" + "x" * 500, status=0xC000, by_backend=True)
    _publish(t)
    row = FailedOperation.objects.get()
    assert row.study_uid == "" and row.sop_instance_uid == "1.2.3.1.1"
    assert row.calling_ae == "EVIL\ufffd[31mAE_TOO_" and len(row.calling_ae) == 16
    assert row.comment.startswith("disk\ufffdfull\ufffd") and len(row.comment) == 128
    assert (row.status, row.origin) == (0xC000, "backend")


def test_a_failure_of_a_pool_the_database_does_not_know_is_dropped_alone(pool):
    t = Telemetry(process_id="test:1")
    _failed(t, 1)
    _failed(t, 2, pool_id="gone")
    _failed(t, 3)
    _publish(t)
    assert sorted(FailedOperation.objects.values_list("study_uid", flat=True)) == ["1.2.3.1", "1.2.3.3"]


def test_rejections_from_two_processes_add_up_on_one_row(pool):
    one, two = Telemetry(process_id="test:1"), Telemetry(process_id="test:2")
    for t, times in ((one, 3), (two, 2)):
        for _ in range(times):
            t.association_rejected("called-ae", pool_id="main", source_ip="10.0.0.9", calling_ae="US2",
                                   called_ae="WRONG", detail="called AE title 'WRONG' is not 'SYNTHIQ'")
        _publish(t)
    _publish(one)  # nothing new: nothing added
    row = RejectedAssociation.objects.get()
    assert (row.reason, row.calling_ae, row.called_ae, row.source_ip, row.count) == (
        "called-ae", "US2", "WRONG", "10.0.0.9", 5)
    assert row.first_seen_utc <= row.last_seen_utc
    assert one.snapshot()["counters"]["rejected.called-ae"] == 3


def test_a_scan_from_many_addresses_is_counted_without_a_row_each(pool):
    t = Telemetry(process_id="test:1")
    for n in range(REJECTIONS_PENDING + 50):
        t.association_rejected("source-address", pool_id="main", source_ip=f"10.1.{n // 250}.{n % 250}",
                               detail="not in Pools[main].AllowedSources")
    _publish(t)
    assert RejectedAssociation.objects.count() == REJECTIONS_PENDING + 1
    rest = RejectedAssociation.objects.get(source_ip="*")
    assert rest.count == 50 and "more distinct callers" in rest.detail


def test_refused_contexts_are_listed_but_not_counted_as_rejected_associations(pool):
    t = Telemetry(process_id="test:1")
    t.contexts_refused(pool_id="main", source_ip="10.0.0.3", calling_ae="WS1", called_ae="SYNTHIQ",
                       sop_classes=["StudyRootQueryRetrieveInformationModelFind (1.2.840.10008.5.1.4.1.2.2.1)"])
    _publish(t)
    row = RejectedAssociation.objects.get()
    assert row.reason == "presentation-context" and "Find" in row.detail
    assert not any(k.startswith("rejected.") for k in t.snapshot()["counters"])
