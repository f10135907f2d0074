"""The bindings as runproxy holds them (hot cache, write-behind, degraded mode) against a
real database, including a full disk (SQLite's SQLITE_FULL)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.backends.signals import connection_created
from django.test.utils import CaptureQueriesContext

from affinity.bindings import Bindings
from affinity.models import Binding
from affinity.services import binding_claim, bindings_claim_many, bindings_purge_expired
from pools.models import Backend, Pool


@pytest.fixture
def pool(db):
    p = Pool.objects.create(id="main", ae_title="SYNTHIQ", port=11112)
    for name in ("node-a", "node-b"):
        Backend.objects.create(id=name, pool=p, ae_title=name.upper()[:16], host="h", port=104)
    return p


def test_insert_if_absent_returns_the_first_claim(pool):
    now = dt.datetime.now(dt.UTC)
    assert binding_claim(pool_id="main", study_uid="1.2.3", backend_id="node-a", now=now) == "node-a"
    assert binding_claim(pool_id="main", study_uid="1.2.3", backend_id="node-b", now=now) == "node-a"
    assert Binding.objects.count() == 1


@pytest.mark.postgres
def test_a_batch_of_new_studies_is_claimed_in_one_statement_and_a_study_held_elsewhere_keeps_its_backend(pool):
    now = dt.datetime.now(dt.UTC)
    binding_claim(pool_id="main", study_uid="held", backend_id="node-a", now=now)  # another process's claim
    new = {("main", f"new-{n}"): "node-b" for n in range(600)}  # more than one statement's rows
    with CaptureQueriesContext(connection) as queries:
        held = bindings_claim_many(claims=new, now=now)
    assert held == new  # 500 + 100 rows in two inserts, nothing read back
    assert [q["sql"].split()[0] for q in queries] == ["INSERT", "INSERT"]
    with CaptureQueriesContext(connection) as queries:
        held = bindings_claim_many(claims={("main", "held"): "node-b", ("main", "fresh"): "node-b"}, now=now)
    assert held == {("main", "held"): "node-a", ("main", "fresh"): "node-b"}
    assert [q["sql"].split()[0] for q in queries] == ["INSERT", "SELECT"]  # the read: the study it did not get
    assert Binding.objects.get(study_uid="held").backend_id == "node-a"
    assert Binding.objects.filter(backend_id="node-b").count() == 601
    row = Binding.objects.get(study_uid="fresh")
    assert row.first_seen_utc == row.last_seen_utc == now and row.instance_count == 0


def test_touches_are_written_behind_in_one_batch(pool):
    bindings = Bindings(window_hours=96)
    assert bindings.claim(("main", "1.2.3"), "node-a") == "node-a"
    for _ in range(5):
        bindings.touch(("main", "1.2.3"))
    assert Binding.objects.get().instance_count == 0
    bindings.flush()
    assert Binding.objects.get().instance_count == 5


def test_idle_bindings_are_purged_after_the_window(pool):
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=100)
    binding_claim(pool_id="main", study_uid="old", backend_id="node-a", now=old)
    binding_claim(pool_id="main", study_uid="new", backend_id="node-a", now=dt.datetime.now(dt.UTC))
    assert bindings_purge_expired(window_hours=96, now=dt.datetime.now(dt.UTC)) == 1
    assert list(Binding.objects.values_list("study_uid", flat=True)) == ["new"]


def test_a_full_disk_keeps_routing_from_memory_and_writes_the_bindings_once_space_is_back(pool, db_kind):
    if db_kind != "sqlite":
        pytest.fail("this test needs SQLite's max_page_count: run it with SYNTHIQ_TEST_DB=sqlite")
    bindings = Bindings(window_hours=96)
    assert bindings.claim(("main", "cached"), "node-a") == "node-a"
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]

    def disk_full(sender, connection, **kwargs):
        # SQLite's own limit: writes past it fail with SQLITE_FULL, as on a full disk.
        connection.cursor().execute(f"PRAGMA max_page_count = {pages}")

    connection_created.connect(disk_full)
    connection.close()
    try:
        _disk_full_checks(bindings)
    finally:
        connection_created.disconnect(disk_full)
        connection.close()
    bindings.flush()
    assert bindings.db_ok and bindings.pending_writes() == 0
    assert Binding.objects.get(study_uid="new-study").backend_id == "node-b"


def _fill_until_a_binding_no_longer_fits() -> None:
    """Take the last free space: the freelist other tests left and the room on the b-tree leaves
    the next binding would land on. Fillers shrink in size, sort just below "new-study", and carry
    the same pool, backend and timestamp shape, so each lands where the claim will and none is
    larger than it: once the smallest no longer fits, neither does the claim."""
    now = dt.datetime.now(dt.UTC)
    n = 0
    for pad in (2000, 400, 80, 16, 0):
        for _ in range(100_000):
            n += 1
            try:
                with transaction.atomic():
                    Binding.objects.create(pool_id="main", study_uid=f"n{n:07d}" + "x" * pad, backend_id="node-b",
                                           first_seen_utc=now, last_seen_utc=now)
            except DatabaseError:
                break
        else:
            pytest.fail(f"{n} filler rows and the database is still not full")


def _disk_full_checks(bindings: Bindings) -> None:
    _fill_until_a_binding_no_longer_fits()
    assert bindings.cached(("main", "cached")) == "node-a"  # a cached binding needs no write
    assert bindings.claim(("main", "new-study"), "node-b") == "node-b"  # decided, kept in memory
    assert not bindings.db_ok and "full" in bindings.db_error
    assert bindings.pending_writes() == 1
    assert bindings.lookup(("main", "new-study")) == "node-b"
    bindings.flush()  # still full: the pending binding is kept, not dropped
    assert bindings.pending_writes() == 1
