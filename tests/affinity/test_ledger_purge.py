"""What the study ledger knows outlives the study cache window: adopted bindings and those
whose verdict is split or missing survive the purge, and the acknowledged instances live as
long as their binding (a short window, a real database)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError

from affinity import selectors
from affinity.bindings import Bindings
from affinity.models import Binding, InstanceLocation
from affinity.services import (
    binding_verdict_record,
    bindings_mark_adopted,
    bindings_purge_expired,
    instances_record,
)
from pools.models import Backend, Pool

WINDOW_HOURS = 0.01  # 36 s, the shortest StudyCacheWindowHours


@pytest.fixture
def pool(db):
    p = Pool.objects.create(id="main", ae_title="SYNTHIQ", port=11112)
    for name in ("node-a", "node-b"):
        Backend.objects.create(id=name, pool=p, ae_title=name.upper(), host="h", port=104)
    return p


@pytest.mark.postgres
def test_adopted_split_and_missing_bindings_and_their_instances_survive_a_short_cache_window(pool):
    bindings = Bindings(window_hours=WINDOW_HOURS)
    studies = ("1.2.1", "1.2.2", "1.2.3", "1.2.4", "1.2.5")  # plain, adopted, split, missing, whole
    for n, study in enumerate(studies):
        bindings.claim(("main", study), "node-a")
        bindings.touch(("main", study))
        bindings.note_instance(pool_id="main", sop_instance_uid=f"{study}.{n}", backend_id="node-a", study_uid=study)
    bindings.flush()
    assert selectors.study_acknowledged(pool_id="main", study_uid="1.2.3") == {"1.2.3.2"}
    now = dt.datetime.now(dt.UTC)
    bindings_mark_adopted(pool_id="main", study_uids=["1.2.2"], backend_id="node-a")
    for study, verdict in (("1.2.3", "split"), ("1.2.4", "missing"), ("1.2.5", "whole")):
        assert binding_verdict_record(pool_id="main", study_uid=study, backend_id="node-a", verdict=verdict,
                                      held={"node-a": 1}, now=now)

    later = now + dt.timedelta(hours=WINDOW_HOURS * 2)  # every binding and instance is now past the window
    assert bindings_purge_expired(window_hours=WINDOW_HOURS, now=later) == 2

    assert sorted(Binding.objects.values_list("study_uid", flat=True)) == ["1.2.2", "1.2.3", "1.2.4"]
    assert sorted(InstanceLocation.objects.values_list("study_uid", flat=True)) == ["1.2.2", "1.2.3", "1.2.4"]
    kept = Binding.objects.get(study_uid="1.2.4")
    assert (kept.verdict, kept.held, kept.verified_utc) == ("missing", {"node-a": 1}, now)


def test_an_instance_location_of_a_live_binding_is_kept_past_the_window(pool):
    bindings = Bindings(window_hours=WINDOW_HOURS)
    bindings.claim(("main", "1.3.1"), "node-b")
    bindings.note_instance(pool_id="main", sop_instance_uid="1.3.1.1", backend_id="node-b", study_uid="1.3.1")
    bindings.flush()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    InstanceLocation.objects.update(seen_utc=long_ago)  # the study's first instance, an hour ago
    bindings.touch(("main", "1.3.1"))  # and one just now: the binding is live
    bindings.flush()
    assert bindings_purge_expired(window_hours=WINDOW_HOURS, now=dt.datetime.now(dt.UTC)) == 0
    assert selectors.study_acknowledged(pool_id="main", study_uid="1.3.1") == {"1.3.1.1"}


@pytest.mark.postgres
def test_instance_locations_are_written_once_each_and_a_known_instance_keeps_its_row(pool):
    """The write-behind's insert (raw multi-row SQL on SQLite and PostgreSQL): more rows than
    one statement takes, a known instance keeps its first backend and time, the time reads
    back as written (UTC), and an unknown backend fails the batch as the ORM's insert did."""
    first = dt.datetime(2026, 12, 1, 8, 30, 15, 123456, tzinfo=dt.UTC)
    later = first + dt.timedelta(hours=1)
    instances_record(locations={("main", f"1.2.7.{n}"): ("node-a", "1.2.7", first) for n in range(1203)})
    instances_record(locations={("main", "1.2.7.5"): ("node-b", "1.2.7", later),
                                ("main", "1.2.8.1"): ("node-b", "1.2.8", later)})
    assert InstanceLocation.objects.filter(pool_id="main").count() == 1204
    kept = InstanceLocation.objects.get(pool_id="main", sop_instance_uid="1.2.7.5")
    assert (kept.backend_id, kept.seen_utc) == ("node-a", first)
    assert InstanceLocation.objects.get(sop_instance_uid="1.2.8.1").backend_id == "node-b"
    with pytest.raises(IntegrityError):
        instances_record(locations={("main", "1.2.9.1"): ("node-z", "1.2.9", later)})
    assert not InstanceLocation.objects.filter(sop_instance_uid="1.2.9.1").exists()
