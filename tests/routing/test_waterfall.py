"""The routing waterfall as a pure function: each tier in microseconds, no I/O."""

from __future__ import annotations

from collections import Counter

from routing.waterfall import (
    AFFINITY_HIT,
    FALLBACK,
    LEAST_BUSY,
    WEIGHTED,
    BackendState,
    WrrState,
    decide,
)


def B(id, **kw) -> BackendState:  # noqa: N802 - reads like a table row
    return BackendState(id=id, **({"healthy": True, "load": 0.0, "capacity": 50} | kw))


def test_a_bound_study_stays_on_its_backend_even_when_unhealthy_busy_or_draining():
    backends = (B("a"), B("b", healthy=False, load=0.99, draining=True))
    d = decide(backends=backends, bound_backend_id="b", wrr=WrrState())
    assert (d.backend_id, d.reason) == ("b", AFFINITY_HIT)


def test_a_binding_to_a_disabled_or_removed_backend_is_decided_again():
    backends = (B("a"), B("b", enabled=False))
    assert decide(backends=backends, bound_backend_id="b", wrr=WrrState()).backend_id == "a"
    assert decide(backends=backends, bound_backend_id="gone", wrr=WrrState()).reason == LEAST_BUSY


def test_least_busy_ranks_by_normalized_load_and_ties_go_to_the_lowest_id():
    backends = (B("a", load=0.5), B("b", load=0.2), B("c", load=0.2))
    d = decide(backends=backends, bound_backend_id=None, wrr=WrrState())
    assert (d.backend_id, d.reason) == ("b", LEAST_BUSY)


def test_unhealthy_and_draining_backends_take_no_new_studies():
    backends = (B("a", healthy=False), B("b", draining=True), B("c", load=0.9))
    assert decide(backends=backends, bound_backend_id=None, wrr=WrrState()).backend_id == "c"


def test_an_unknown_load_backend_gets_exactly_its_weight_share_never_more():
    backends = (B("a"), B("b"), B("live", load=None, weight=1))
    wrr = WrrState()
    got = Counter(decide(backends=backends, bound_backend_id=None, wrr=wrr).reason for _ in range(90))
    assert got == {LEAST_BUSY: 60, WEIGHTED: 30}


def test_the_herding_guard_counts_what_was_sent_since_the_last_report():
    backends = (B("a", sent_since_report=3), B("b", sent_since_report=1), B("c", sent_since_report=2))
    assert decide(backends=backends, bound_backend_id=None, wrr=WrrState()).backend_id == "b"


def test_nothing_healthy_falls_back_to_the_first_enabled_backend_by_id():
    backends = (B("a", enabled=False), B("b", healthy=False), B("c", healthy=False))
    d = decide(backends=backends, bound_backend_id=None, wrr=WrrState())
    assert (d.backend_id, d.reason) == ("b", FALLBACK)


def test_no_enabled_backend_means_no_decision():
    d = decide(backends=(B("a", enabled=False),), bound_backend_id=None, wrr=WrrState())
    assert d.backend_id is None
