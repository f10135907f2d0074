"""Where a study goes, decided as for DIMSE traffic: the relay's placement (the same hot
cache, bindings and waterfall), with the routing log line and the decision recorded."""

from __future__ import annotations

import logging

from routing.dicomweb.context import Context

logger = logging.getLogger("synthiq.routing")


async def study_place(ctx: Context, *, study_uid: str, service: str, source_ip: str, sop_uid: str = "-") -> str | None:
    """The study's backend, binding it if it is new; None when no backend can take it."""
    relay, pool_id = ctx.relay, ctx.pool.id
    route = await relay.route(pool_id, study_uid)
    if route.backend_id is None:
        logger.error("%s pool=%s source_ip=%s study=%s sop=%s: no enabled backend can take it",
                     service, pool_id, source_ip, study_uid, sop_uid)
        return None
    relay.telemetry.decided(pool_id=pool_id, study_uid=study_uid, backend_id=route.backend_id, reason=route.reason,
                            calling_ae="", source_ip=source_ip, modality="")
    logger.info("route pool=%s service=%s source_ip=%s study=%s sop=%s backend=%s reason=%s",
                pool_id, service, source_ip, study_uid, sop_uid, route.backend_id, route.reason)
    relay.placement.touch(pool_id, study_uid)
    return route.backend_id


async def study_bound(ctx: Context, study_uid: str) -> str | None:
    """The backend the study is bound to, if it is (never binds it)."""
    return await ctx.relay.bound_backend(ctx.pool.id, study_uid)
