"""A client's GET relayed to one backend and its answer streamed back as it comes: status,
content headers and body bytes unchanged (the body is never decoded: byte-exact, memory
bounded by one chunk) — but for a JSON answer of a backend whose root path differs from
BasePath, whose URLs are rewritten to SynthIQ's. A redirect is never followed, nor passed on
(it would name the backend)."""

from __future__ import annotations

import logging
import time

import aiohttp
from aiohttp import web

from routing.dicomweb.context import PASSED_RESPONSE_HEADERS, Context, WebBackend, read_bounded, source_ip

logger = logging.getLogger("synthiq.routing")

CHUNK = 64 * 1024
JSON_TYPES = ("application/dicom+json", "application/json")
# A JSON answer (metadata, a query) is held this much at most to rewrite the URLs in it.
REWRITE_LIMIT = 64 * 1024 * 1024


def backend_url(backend: WebBackend, path: str, query_string: str) -> str:
    return f"{backend.url}/{path}" + (f"?{query_string}" if query_string else "")


def relayed_outcome(status: int | None, backend: WebBackend) -> tuple[bool, str]:
    """For the audit trail: whether a relayed GET succeeded (the status SynthIQ answered, or
    None when the answer was cut off), and if not, why."""
    if status is None:
        return False, f"answer of backend {backend.id} cut off"
    return 200 <= status < 300, "" if 200 <= status < 300 else f"answered HTTP {status}"


async def relay_get(ctx: Context, request: web.Request, backend: WebBackend, path: str, *,
                    service: str, study_uid: str) -> web.StreamResponse:
    started = time.perf_counter()
    url = backend_url(backend, path, request.query_string)
    headers = ctx.headers(request, backend)
    # Where the backend's root differs from BasePath, the URLs in its JSON answers are rewritten
    # (so they must come uncompressed); anything else passes as it comes, compressed or not.
    rewrite = backend.root != ctx.pool.base_path
    headers["Accept-Encoding"] = "identity" if rewrite else request.headers.get("Accept-Encoding", "identity")
    nbytes = 0
    try:
        async with ctx.session.request(request.method, url, headers=headers, timeout=ctx.timeout,
                                       allow_redirects=False) as answer:
            if 300 <= answer.status < 400:
                logger.error("%s pool=%s source_ip=%s study=%s backend=%s: answered a redirect (%d), not followed",
                             service, ctx.pool.id, source_ip(request), study_uid, backend.id, answer.status)
                ctx.relay.telemetry.operation(service=service, status=0xA702)
                return web.Response(status=502, text=f"backend {backend.id} answered a redirect\n")
            response = web.StreamResponse(status=answer.status)
            for name in PASSED_RESPONSE_HEADERS:
                if name in answer.headers:
                    response.headers[name] = answer.headers[name]
            await response.prepare(request)
            if rewrite and answer.content_type in JSON_TYPES:
                body = await read_bounded(answer.content, REWRITE_LIMIT)
                if len(body) <= REWRITE_LIMIT:
                    base = ctx.client_base(request)
                    body = body.replace(f"{base}{backend.root}/".encode(), f"{base}{ctx.pool.base_path}/".encode())
                else:
                    logger.warning("%s pool=%s study=%s backend=%s: a JSON answer over %d bytes passes with the "
                                   "backend's URLs", service, ctx.pool.id, study_uid, backend.id, REWRITE_LIMIT)
                nbytes += len(body)
                await response.write(body)
            async for chunk in answer.content.iter_chunked(CHUNK):
                nbytes += len(chunk)
                await response.write(chunk)
            await response.write_eof()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        logger.error("%s pool=%s source_ip=%s study=%s backend=%s path=%r: backend not reached or went away after "
                     "%d bytes: %s: %s", service, ctx.pool.id, source_ip(request), study_uid, backend.id, path[:200],
                     nbytes, type(exc).__name__, exc)
        ctx.relay.telemetry.operation(service=service, status=0xA701)
        if nbytes:
            raise  # the answer has begun: the connection is cut, never completed as a success
        return web.Response(status=502, text=f"backend {backend.id} not reached\n")
    ok = 200 <= answer.status < 300
    ctx.relay.telemetry.operation(service=service, status=0x0000 if ok else 0xC000)
    logger.info("%s pool=%s source_ip=%s study=%s backend=%s path=%r: HTTP %d bytes=%d seconds=%.3f", service,
                ctx.pool.id, source_ip(request), study_uid, backend.id, path[:200], answer.status, nbytes,
                time.perf_counter() - started)
    return response
