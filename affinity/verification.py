"""Is each study whole where it landed? The study ledger's verification.

A study's bound backend (and, with ``CheckOtherBackends``, the pool's other backends) are
asked what they hold of it, and that is compared with what SynthIQ relayed and had
acknowledged. Counts (NumberOfStudyRelatedInstances) decide only when they are equal;
otherwise an instance-level C-FIND names what is missing, or where it is:

- ``whole``: the bound backend holds every acknowledged instance and every instance any
  other backend holds (copies elsewhere are listed in ``held``);
- ``split``: another backend holds an instance the bound backend lacks;
- ``missing``: an acknowledged instance is on no backend (when both apply: ``split``);
- ``unverified``: not quiet yet, or no backend could be asked.

Blocking, on threads of its own (runproxy's supervisor, a Celery worker, a management
command), never on an event loop. A backend that cannot be asked or a database that is
away postpones a verification; it never fails it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.db import DatabaseError, close_old_connections, connection

from affinity import scu, selectors, services
from affinity.models import Binding, Verdict
from pools import selectors as pool_selectors
from pools.config import ReconciliationConfig
from pools.selectors import reconciliation_settings

logger = logging.getLogger("synthiq.affinity")

# One query's time limit (association, each response).
QUERY_TIMEOUT_SECONDS = 30.0
# Bindings taken per verification round and pool at most.
ROUND_LIMIT = 200


@dataclass
class Asker:
    """Asks a pool's backends, as the pool's AE title, at most ``rate`` queries a second each."""

    calling_ae: str
    rate: scu.RateLimit
    timeout: float = QUERY_TIMEOUT_SECONDS

    def study(self, peer: scu.Peer, study_uid: str) -> int | None:
        """Instances the backend holds of the study (0: none); None: it gave no count."""
        self.rate.wait(peer.id)
        answer = scu.find_studies(peer, calling_ae=self.calling_ae, timeout=self.timeout, study_uid=study_uid)
        if study_uid not in answer.studies:
            return 0
        return answer.studies[study_uid][0]

    def instances(self, peer: scu.Peer, study_uid: str) -> dict[str, str]:
        self.rate.wait(peer.id)
        return scu.find_instances(peer, calling_ae=self.calling_ae, timeout=self.timeout, study_uid=study_uid)


@dataclass
class Prefetched(Asker):
    """An Asker that answers the instance lists it was given, (backend id, study) -> list,
    without asking again; anything else it asks."""

    lists: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def instances(self, peer: scu.Peer, study_uid: str) -> dict[str, str]:
        found = self.lists.get((peer.id, study_uid))
        return found if found is not None else super().instances(peer, study_uid)


@dataclass
class Examination:
    verdict: str
    held: dict[str, int]
    acknowledged: int
    # Acknowledged instances on no backend.
    lost: set[str] = field(default_factory=set)
    # Instances the bound backend lacks, by the backends holding them: SOP -> series.
    lacking: dict[str, dict[str, str]] = field(default_factory=dict)
    # Backends that could not be asked.
    silent: list[str] = field(default_factory=list)


def _asked_counts(study_uid: str, bound: scu.Peer, others: list[scu.Peer], ask: Asker
                  ) -> tuple[dict[str, int | None], list[str]]:
    """Each backend's instance count of the study (study-level C-FIND), and those that could
    not be asked (the bound one raises scu.Unreachable)."""
    counts: dict[str, int | None] = {bound.id: ask.study(bound, study_uid)}
    silent = []
    for peer in others:
        try:
            counts[peer.id] = ask.study(peer, study_uid)
        except (scu.Unreachable, OSError, RuntimeError, ValueError) as exc:
            logger.warning("verify study=%s: backend %s could not be asked: %s", study_uid, peer.id, exc)
            silent.append(peer.id)
    return counts, silent


def study_examine(*, study_uid: str, bound: scu.Peer, others: list[scu.Peer], acknowledged: set[str],
                  ask: Asker, instance_level: bool = False,
                  known: dict[str, int | None] | None = None) -> Examination:
    """What the backends hold of the study and the verdict. ``known``: each backend's count
    as just answered (adopt has them from its own queries), so not asked again; a backend
    it does not name holds none. Raises scu.Unreachable when the bound backend cannot be
    asked (the verification is postponed)."""
    if known is None:
        counts, silent = _asked_counts(study_uid, bound, others, ask)
    else:
        counts, silent = {p.id: known.get(p.id, 0) for p in (bound, *others)}, []
    count = counts[bound.id]
    holders = [p for p in others if counts.get(p.id) != 0 and p.id not in silent]
    if not instance_level and not holders and count is not None and (count == len(acknowledged) or not acknowledged):
        held = {bound.id: count} if count else {}
        verdict = Verdict.WHOLE if count or not acknowledged else Verdict.MISSING
        return Examination(verdict, held, len(acknowledged), lost=set(acknowledged) if not count else set(),
                           silent=silent)
    on_bound = ask.instances(bound, study_uid) if count != 0 else {}
    elsewhere: dict[str, dict[str, str]] = {}
    for peer in holders:
        try:
            elsewhere[peer.id] = ask.instances(peer, study_uid)
        except (scu.Unreachable, OSError, RuntimeError, ValueError) as exc:
            logger.warning("verify study=%s: backend %s could not list its instances: %s", study_uid, peer.id, exc)
            silent.append(peer.id)
    held = {backend_id: len(found) for backend_id, found in [(bound.id, on_bound), *elsewhere.items()] if found}
    lacking = {backend_id: {sop: series for sop, series in found.items() if sop not in on_bound}
               for backend_id, found in elsewhere.items()}
    lacking = {backend_id: found for backend_id, found in lacking.items() if found}
    anywhere = set(on_bound).union(*elsewhere.values())
    lost = acknowledged - anywhere
    verdict = Verdict.SPLIT if lacking else Verdict.MISSING if lost else Verdict.WHOLE
    return Examination(verdict, held, len(acknowledged), lost=lost, lacking=lacking, silent=silent)


def pool_peers(*, pool_id: str) -> tuple[str, dict[str, scu.Peer]]:
    """The pool's AE title and its enabled backends as peers to ask, by id."""
    pool = pool_selectors.pool_get(pool_id=pool_id)
    if pool is None:
        raise LookupError(f"no pool {pool_id!r}")
    peers = {b.id: scu.Peer(b.id, b.ae_title, b.host, b.port, b.client_tls)
             for b in pool_selectors.backends_of_pool(pool_id=pool_id) if b.enabled}
    return pool.ae_title, peers


def pool_asking(*, pool_id: str) -> tuple[ReconciliationConfig, dict[str, scu.Peer], Asker]:
    """What a ledger command needs to ask a pool's backends: the Reconciliation settings, the
    enabled backends as peers, and an Asker at the configured rate. Raises ConfigError or
    LookupError (no such pool)."""
    settings = reconciliation_settings()
    calling_ae, peers = pool_peers(pool_id=pool_id)
    return settings, peers, Asker(calling_ae, scu.RateLimit(settings.max_queries_per_second))


def binding_verify(*, binding: Binding, peers: dict[str, scu.Peer], ask: Asker, settings: ReconciliationConfig,
                   now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC), leased: bool = False,
                   healthy: set[str] | None = None, instance_level: bool = False,
                   known: dict[str, int | None] | None = None) -> Examination | None:
    """Verify one binding and record its verdict; None when postponed (the lease held by
    another host, the bound backend unreachable, the database away)."""
    try:
        close_old_connections()
        if not leased and not services.binding_lease(binding_id=binding.id, verified_utc=binding.verified_utc,
                                                      now=now()):
            return None
        acknowledged = selectors.study_acknowledged(pool_id=binding.pool_id, study_uid=binding.study_uid)
    except DatabaseError as exc:
        logger.warning("verify study=%s postponed: database unavailable (%s)", binding.study_uid, exc)
        return None
    # The verdict describes the study as of now: an instance that arrives while the backends
    # are being asked makes it due again (last seen after verified).
    started = now()
    bound = peers.get(binding.backend_id)
    others = [p for backend_id, p in sorted(peers.items()) if backend_id != binding.backend_id
              and (healthy is None or backend_id in healthy)] if settings.check_other_backends else []
    try:
        if bound is None:
            raise scu.Unreachable(f"backend {binding.backend_id} is not enabled in pool {binding.pool_id}")
        found = study_examine(study_uid=binding.study_uid, bound=bound, others=others, acknowledged=acknowledged,
                              ask=ask, instance_level=instance_level, known=known)
    except (scu.Unreachable, OSError, RuntimeError, ValueError) as exc:
        logger.warning("verify pool=%s study=%s postponed: %s", binding.pool_id, binding.study_uid, exc)
        try:
            services.binding_postpone(binding_id=binding.id, now=now())
        except DatabaseError:
            pass  # the lease expires by itself
        return None
    try:
        recorded = services.binding_verdict_record(pool_id=binding.pool_id, study_uid=binding.study_uid,
                                                   backend_id=binding.backend_id, verdict=found.verdict,
                                                   held=found.held, now=started)
    except DatabaseError as exc:
        logger.warning("verify study=%s: verdict not recorded, database unavailable (%s)", binding.study_uid, exc)
        return None
    if not recorded:
        return None
    log = logger.warning if found.verdict in (Verdict.SPLIT, Verdict.MISSING) else logger.info
    log("verified pool=%s study=%s backend=%s verdict=%s acknowledged=%d held=%s%s", binding.pool_id,
        binding.study_uid, binding.backend_id, found.verdict, found.acknowledged, found.held,
        f" not asked: {','.join(found.silent)}" if found.silent else "")
    return found


def verify_due(*, pool_id: str, settings: ReconciliationConfig, healthy: set[str] | None = None,
               limit: int = ROUND_LIMIT, rate: scu.RateLimit | None = None, budget_seconds: float | None = None,
               timeout: float = QUERY_TIMEOUT_SECONDS) -> int:
    """One round of background verification of a pool: the bindings due (quiet, not
    leased), ``settings.concurrency`` at once, rate-limited per backend; no binding is
    started after ``budget_seconds`` (the rest wait for the next round). Returns how many
    got a verdict. Postpones, never raises, on a database outage or a silent backend."""
    now = dt.datetime.now(dt.UTC)
    deadline = time.monotonic() + budget_seconds if budget_seconds is not None else None
    try:
        close_old_connections()
        due = selectors.bindings_due_for_verification(pool_id=pool_id, now=now, quiet_seconds=settings.quiet_seconds,
                                                      reverify_hours=settings.reverify_hours, limit=limit)
        if not due:
            return 0
        calling_ae, peers = pool_peers(pool_id=pool_id)
    except (DatabaseError, LookupError) as exc:
        logger.warning("verification of pool %s postponed: %s", pool_id, exc)
        return 0
    ask = Asker(calling_ae, rate or scu.RateLimit(settings.max_queries_per_second), timeout)

    def one(binding: Binding) -> bool:
        if deadline is not None and time.monotonic() > deadline:
            return False
        try:
            return binding_verify(binding=binding, peers=peers, ask=ask, settings=settings, healthy=healthy) is not None
        finally:
            connection.close()  # this thread's own connection: the pool's threads end with the round

    with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="verify") as pool:
        return sum(pool.map(one, due))
