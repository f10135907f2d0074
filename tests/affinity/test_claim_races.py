"""Binding claims from several processes at once, on the real database: they must agree and
never deadlock. A deadlock is an error the claimer takes for the database being away, and then
it places the new studies by a hash of their UID: a study split over two backends (seen in CI
with two runproxy processes on PostgreSQL, each claiming a batch in its own arrival order)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import DatabaseError, connection

from affinity import services
from pools.models import Backend, Pool


@pytest.mark.postgres
def test_claims_of_the_same_new_studies_in_opposite_orders_agree_and_never_deadlock(db):
    pool = Pool.objects.create(id="main", ae_title="SYNTHIQ", port=1)
    for backend_id in ("node-a", "node-b"):
        Backend.objects.create(id=backend_id, pool=pool, ae_title=backend_id.upper(), host="127.0.0.1", port=1)
    errors: list[Exception] = []
    for attempt in range(5):
        keys = [("main", f"1.2.826.0.1.3680043.10.543.{attempt}.{n}") for n in range(300)]
        held: dict[str, dict[tuple[str, str], str]] = {}
        barrier = threading.Barrier(2)

        def claim(name: str, order: list[tuple[str, str]], backend_id: str, barrier: threading.Barrier,
                  held: dict[str, dict[tuple[str, str], str]]) -> None:
            try:
                barrier.wait(timeout=10)
                held[name] = services.bindings_claim_many(claims=dict.fromkeys(order, backend_id),
                                                          now=dt.datetime.now(dt.UTC))
            except DatabaseError as exc:
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=claim, args=("a", keys, "node-a", barrier, held)),
                   threading.Thread(target=claim, args=("b", keys[::-1], "node-b", barrier, held))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors[0]
        assert held["a"] == held["b"] and set(held["a"]) == set(keys)
