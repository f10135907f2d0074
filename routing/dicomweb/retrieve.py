"""WADO-RS (PS3.18 10.4): a study's objects, metadata, frames, rendered images and bulk
data, from the study's backend — the one it is bound to, else the one a study-level query
finds it on (as a C-MOVE for an unbound study does) — streamed through as it comes. A
bound backend that cannot be reached is a failure, never another node's copy."""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web

from routing.dicom.uids import uid_problem
from routing.dicomweb.context import Context, client_user, source_ip
from routing.dicomweb.passthrough import relay_get, relayed_outcome
from routing.dicomweb.placing import study_bound
from routing.dicomweb.query import backend_query

logger = logging.getLogger("synthiq.routing")

SERVICE = "WADO-RS"
_FRAMES = re.compile(r"^[0-9]{1,9}(,[0-9]{1,9}){0,9999}$")
_LEAVES = frozenset({"metadata", "rendered", "thumbnail", "bulkdata", "pixeldata"})


def wado_path_problem(segments: list[str]) -> str | None:
    """Why ``studies/{uid}[/series/{uid}[/instances/{uid}]][/leaf...]`` is not a WADO-RS path."""
    levels = ("studies", "series", "instances")
    i = 0
    while i < len(segments) and i // 2 < len(levels) and segments[i] == levels[i // 2]:
        if i + 1 >= len(segments):
            return f"{segments[i]} without a UID"
        problem = uid_problem(segments[i + 1])
        if problem:
            return f"{levels[i // 2]} UID invalid: {problem}"
        i += 2
    rest = segments[i:]
    if i == 0:
        return "not under studies/"
    if not rest:
        return None
    if rest[0] == "frames" and len(rest) in (2, 3) and _FRAMES.match(rest[1]) and rest[2:] in ([], ["rendered"]):
        return None
    if rest[0] in _LEAVES and len(rest) == 1:
        return None
    # Bulk data by tag path (Orthanc's plugin names it "bulk": its BulkDataURIs point there).
    if rest[0] in ("bulkdata", "bulk") and all(re.fullmatch(r"[0-9A-Fa-f]{8}|[0-9]{1,6}", s) for s in rest[1:]) \
            and len(rest) <= 64:
        return None
    return "unknown resource"


async def wado(ctx: Context, request: web.Request, segments: list[str]) -> web.StreamResponse:
    problem = wado_path_problem(segments)
    if problem:
        logger.warning("WADO-RS pool=%s source_ip=%s: path %r refused: %s", ctx.pool.id, source_ip(request),
                       "/".join(segments)[:200], problem)
        return web.Response(status=400 if "invalid" in problem else 404, text=f"{problem}\n")
    study = segments[1]
    bound = await study_bound(ctx, study)
    backend = ctx.pool.backend(bound) if bound else None
    if backend is None:
        backend = await _find(ctx, request, study)
        if backend is None:
            logger.info("WADO-RS pool=%s source_ip=%s study=%s: on no healthy backend", ctx.pool.id,
                        source_ip(request), study)
            return web.Response(status=404, text="study not found on any healthy backend\n")
    path, status = "/".join(segments), None
    try:
        response = await relay_get(ctx, request, backend, path, service=SERVICE, study_uid=study)
        status = response.status
    finally:
        ok, text = relayed_outcome(status, backend)
        ctx.relay.telemetry.audit.web_retrieved(
            address=source_ip(request), user=client_user(request), backend_id=backend.id, backend_url=backend.url,
            study_uid=study, resource=f"{ctx.pool.base_path}/{path}", ok=ok, text=text)
    return response


async def _find(ctx: Context, request: web.Request, study: str):  # type: ignore[no-untyped-def]
    """The first healthy backend (in the pool's order) whose study-level query finds the study."""
    healthy = set(ctx.relay.placement.healthy_backends(ctx.pool.id))
    asked = [b for b in ctx.pool.backends if b.id in healthy]
    answers = await asyncio.gather(*(backend_query(ctx, request, b, "studies", [("StudyInstanceUID", study)])
                                     for b in asked))
    for backend, (objects, _) in zip(asked, answers, strict=True):
        if objects:
            logger.info("WADO-RS pool=%s source_ip=%s study=%s: unbound, found on backend %s", ctx.pool.id,
                        source_ip(request), study, backend.id)
            return backend
    return None
