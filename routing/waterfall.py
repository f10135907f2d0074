"""The routing waterfall as a pure function of a snapshot.

No ORM, no sockets, no clock: everything the decision depends on is passed in,
and the only state it evolves (the smooth weighted round-robin counters) is
returned, so each tier is testable in microseconds.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

AFFINITY_HIT = "affinity-hit"
LEAST_BUSY = "least-busy"
WEIGHTED = "weighted"
FALLBACK = "fallback"
# Placed by a rendezvous hash of the study while the affinity database was unreachable.
RENDEZVOUS = "rendezvous"
# Not a decision: the association already routed this study (the relay's own memory).
ASSOCIATION_CACHED = "association-cached"
# What a decision (a RoutingDecision row) is tagged with, and every tier a routed instance is counted under.
DECISION_TIERS = (AFFINITY_HIT, LEAST_BUSY, WEIGHTED, FALLBACK, RENDEZVOUS)
TIERS = (AFFINITY_HIT, LEAST_BUSY, WEIGHTED, ASSOCIATION_CACHED, FALLBACK, RENDEZVOUS)

# The weighted round-robin slot that stands for "all backends with a known load".
KNOWN_GROUP = "\x00known-load-group"


@dataclass(frozen=True)
class BackendState:
    id: str
    weight: int = 1
    enabled: bool = True
    draining: bool = False
    healthy: bool = False
    # Normalized load as reported (None: the backend reports no load signal).
    load: float | None = None
    capacity: int | None = None
    # Herding guard: instances this process sent since the backend's last report.
    sent_since_report: int = 0

    @property
    def effective_load(self) -> float:
        """Reported load plus what was sent since, on the same scale."""
        assert self.load is not None
        if self.capacity:
            return self.load + self.sent_since_report / self.capacity
        return self.load


@dataclass(frozen=True)
class Decision:
    backend_id: str | None
    reason: str


@dataclass
class WrrState:
    """Smooth weighted round-robin current weights (nginx's algorithm)."""

    current: dict[str, int] = field(default_factory=dict)


def bound_backend(backends: tuple[BackendState, ...], bound_backend_id: str | None) -> BackendState | None:
    """Tier 1: the study's bound backend, if it is still in the pool and enabled."""
    if bound_backend_id is not None:
        for b in backends:
            if b.id == bound_backend_id and b.enabled:
                return b
    return None


def _new_study_candidates(backends: tuple[BackendState, ...]) -> list[BackendState]:
    return [b for b in backends if b.enabled and not b.draining and b.healthy]


def _smooth_wrr(slots: list[tuple[str, int]], state: WrrState) -> str:
    total = sum(w for _, w in slots)
    current = {key: state.current.get(key, 0) + w for key, w in slots}
    # Ties go to the first slot in the given (id-sorted) order.
    chosen = max(slots, key=lambda s: current[s[0]])[0]
    current[chosen] -= total
    state.current = current
    return chosen


def decide(
    *, backends: tuple[BackendState, ...], bound_backend_id: str | None, wrr: WrrState
) -> Decision:
    """Choose a backend for an instance of a study.

    ``backends`` is the pool's backends sorted by id; ``bound_backend_id`` is the
    study's existing binding, if any. ``wrr`` is updated in place when the weighted
    tier runs. A Decision with ``backend_id=None`` means no backend can take it.
    """
    # Tier 1: persistent affinity, even to an unhealthy, slow or draining backend:
    # moving a study mid-stream is what SynthIQ exists to prevent.
    bound = bound_backend(backends, bound_backend_id)
    if bound is not None:
        return Decision(bound.id, AFFINITY_HIT)

    # Tier 2: health-aware least-busy, with unknown-load backends balanced by weight.
    healthy = _new_study_candidates(backends)
    if healthy:
        known = [b for b in healthy if b.load is not None]
        unknown = [b for b in healthy if b.load is None]
        slots = [(b.id, b.weight) for b in unknown]
        if known:
            slots.append((KNOWN_GROUP, sum(b.weight for b in known)))
        chosen = _smooth_wrr(slots, wrr) if len(slots) > 1 else slots[0][0]
        if chosen != KNOWN_GROUP:
            return Decision(chosen, WEIGHTED)
        best = min(known, key=lambda b: (b.effective_load, b.id))
        return Decision(best.id, LEAST_BUSY)

    # Tier 3: nothing healthy (cold start or pool-wide outage): first enabled by id.
    for b in backends:
        if b.enabled and not b.draining:
            return Decision(b.id, FALLBACK)
    return Decision(None, FALLBACK)


def _rendezvous_score(study_uid: str, backend_id: str, weight: int) -> float:
    digest = hashlib.blake2b(f"{study_uid}\x00{backend_id}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / 2**64  # in (0, 1)
    return -weight / math.log(unit)  # weighted rendezvous: a backend of weight 2 wins twice as often


def rendezvous(*, backends: tuple[BackendState, ...], study_uid: str) -> str | None:
    """The backend a study goes to when no binding can be read or written (database
    down): a weighted rendezvous hash of the Study Instance UID over the pool's healthy
    backends (else its enabled ones), so every worker and every host sharing the
    database picks the same node without talking, and a backend leaving moves only its
    own share of studies."""
    candidates = (_new_study_candidates(backends)
                  or [b for b in backends if b.enabled and not b.draining]
                  or [b for b in backends if b.enabled])
    if not candidates:
        return None
    return max(candidates, key=lambda b: (_rendezvous_score(study_uid, b.id, b.weight), b.id)).id
