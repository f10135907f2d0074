"""What each pool's backends accept — transfer syntaxes and services — asked at start, for a
pool a reload adds, and again when a backend comes back healthy (``routing.syntax_probe``
asks one backend). Blocking: the supervisor's start-up and a worker's housekeeping thread."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pools.config import Config, PoolConfig
from routing.dicom.sop_classes import SERVICE_CLASSES, VERIFICATION
from routing.relay.server import PoolOffer
from routing.router import Router
from routing.syntax_probe import Abilities, PoolAbilities, pool_abilities, probe_backend
from routing.telemetry import services_view

logger = logging.getLogger("synthiq.routing")


class Prober:
    def __init__(self) -> None:
        self.backend_abilities: dict[str, Abilities | None] = {}  # None: could not be asked
        self.probed_healthy: dict[str, bool] = {}
        self.pools: dict[str, PoolAbilities] = {}

    def probe_pool(self, pool: PoolConfig, router: Router, *, only_new: bool = False) -> PoolOffer:
        """Ask the pool's enabled backends what they accept. With ``only_new``, ask again
        only those that came back healthy since they were last asked, or could not be
        asked; the pool's offer (unchanged backends included)."""
        for state in router.states(pool.id):
            if not state.enabled:
                continue
            came_back = state.healthy and not self.probed_healthy.get(state.id, False)
            if not only_new or came_back or (state.healthy and self.backend_abilities.get(state.id) is None):
                if only_new:
                    logger.info("backend %s is healthy again: asking what it accepts", state.id)
                self.backend_abilities[state.id] = probe_backend(calling_ae=pool.ae_title,
                                                                 backend=router.address(state.id))
            self.probed_healthy[state.id] = state.healthy
        enabled = [s.id for s in router.states(pool.id) if s.enabled]
        self.pools[pool.id] = pool_abilities(pool_id=pool.id, found=[self.backend_abilities.get(b) for b in enabled])
        return self.offer(pool)

    def offer(self, pool: PoolConfig) -> PoolOffer:
        """C-ECHO, plus each switched-on service class that at least one backend offers."""
        abilities = self.pools[pool.id]
        switches = pool.services.model_dump()
        services = (VERIFICATION, *(uid for name, uids in SERVICE_CLASSES.items() if switches[name]
                                    for uid in uids if uid in abilities.services))
        return PoolOffer(pool.id, abilities.ranks, services, abilities.max_pdu)

    def reprobe(self, config: Config, router: Router) -> list[PoolOffer]:
        """The pools with a backend that came back, asked again: their new offers."""
        changed = []
        for pool in config.pools:
            states = router.states(pool.id)
            if not any(s.enabled and s.healthy and (not self.probed_healthy.get(s.id, False)
                                                     or self.backend_abilities.get(s.id) is None) for s in states):
                for s in states:
                    self.probed_healthy[s.id] = s.healthy
                continue
            changed.append(self.probe_pool(pool, router, only_new=True))
        return changed

    def published(self, config: Config, offers: Mapping[str, PoolOffer]) -> dict[str, dict[str, Any]]:
        """Per pool, which non-storage services are passed and why not (for the dashboard)."""
        out = {}
        for pool in config.pools:
            found = {b.id: self.backend_abilities.get(b.id) for b in pool.backends if b.enabled}
            out[pool.id] = services_view(
                switches=pool.services.model_dump(), passed=set(offers[pool.id].services if pool.id in offers else ()),
                backends={b: (a.services if a is not None else None) for b, a in found.items()})
        return out
