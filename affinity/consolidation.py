"""Consolidation: gather a split study onto its bound backend (``manage.py consolidate``).

Exactly the instances the bound backend lacks are copied: each is asked of one backend
holding it (the lowest id), with an IMAGE-level C-MOVE (Study, Series and the list of SOP
Instance UIDs) whose destination is the bound backend's AE title, calling as the pool's AE
title — so no instance is sent twice. Each holder must know the pool's AE as a requester
and the bound backend's AE as a move destination. Then the study is verified again.
Nothing is ever deleted anywhere: the copies left elsewhere are listed, and removing them
is the PACS administrator's decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from affinity import scu
from affinity.models import Binding, Verdict
from affinity.verification import Asker, Examination, binding_verify, study_examine
from pools.config import ReconciliationConfig

logger = logging.getLogger("synthiq.affinity")


def moves_plan(lacking: dict[str, dict[str, str]]) -> dict[str, dict[str, list[str]]]:
    """{holder: {series: [SOP, ...]}}: each instance the bound backend lacks, once, from the
    holder with the lowest id."""
    plan: dict[str, dict[str, list[str]]] = {}
    taken: set[str] = set()
    for holder in sorted(lacking):
        for sop, series in sorted(lacking[holder].items()):
            if sop not in taken:
                taken.add(sop)
                plan.setdefault(holder, {}).setdefault(series, []).append(sop)
    return plan


def binding_consolidate(*, binding: Binding, peers: dict[str, scu.Peer], ask: Asker,
                        settings: ReconciliationConfig, dry_run: bool,
                        say: Callable[[str], None]) -> Examination | None:
    """Copy what the bound backend lacks to it, then verify again. None: it could not be
    examined (its backend unreachable)."""
    study, bound = binding.study_uid, peers.get(binding.backend_id)
    if bound is None:
        say(f"{study}: bound to {binding.backend_id}, which is not an enabled backend of the pool: skipped")
        return None
    others = [p for backend_id, p in sorted(peers.items()) if backend_id != bound.id]
    try:
        found = study_examine(study_uid=study, bound=bound, others=others, acknowledged=set(), ask=ask,
                              instance_level=True)
    except (scu.Unreachable, OSError, RuntimeError, ValueError) as exc:
        say(f"{study}: not examined: {exc}")
        return None
    plan = moves_plan(found.lacking)
    if not plan:
        say(f"{study}: the bound backend {bound.id} lacks nothing (held {found.held})")
    for holder, by_series in plan.items():
        count = sum(len(sops) for sops in by_series.values())
        if dry_run:
            say(f"{study}: would move {count} instance(s) from {holder} to {bound.id} ({bound.ae_title})")
            continue
        try:
            completed = failed = 0
            for series, sops in sorted(by_series.items()):
                ask.rate.wait(holder)
                done, bad = scu.move_instances(peers[holder], calling_ae=ask.calling_ae, timeout=ask.timeout,
                                               study_uid=study, series_uid=series, sop_uids=sops,
                                               destination_ae=bound.ae_title)
                completed, failed = completed + done, failed + bad
        except (scu.Unreachable, OSError, RuntimeError, ValueError) as exc:
            say(f"{study}: moving from {holder} to {bound.id} failed: {exc}")
            logger.warning("consolidate study=%s: move from %s to %s failed: %s", study, holder, bound.id, exc)
            continue
        say(f"{study}: moved {completed} of {count} instance(s) from {holder} to {bound.id}"
            + (f" ({failed} failed)" if failed else ""))
        logger.info("consolidate study=%s: %d of %d instances moved from %s to %s (%d failed)", study, completed,
                    count, holder, bound.id, failed)
    if dry_run:
        return found
    everywhere = settings.model_copy(update={"check_other_backends": True})  # the copies left are listed
    after = binding_verify(binding=binding, peers=peers, ask=ask, settings=everywhere, leased=True,
                           instance_level=True)
    if after is not None:
        strays = {b: n for b, n in after.held.items() if b != bound.id}
        say(f"{study}: now {after.verdict} on {bound.id}"
            + (f"; copies remain on {', '.join(f'{b} ({n})' for b, n in sorted(strays.items()))}: removing them is "
               "the PACS administrator's decision" if strays and after.verdict == Verdict.WHOLE else ""))
    return after
