"""Who may use a pool's DICOMweb port. Without stored backend credentials the client's own
Authorization goes to the backend, which decides. With them, SynthIQ would open the
backends to anyone who reaches the port, so the client must be one of SynthIQ's users (an
API token or HTTP Basic), checked on the executor (the check reads the database)."""

from __future__ import annotations

import logging

from aiohttp import web

from routing.dicomweb.context import USER, Context, source_ip

logger = logging.getLogger("synthiq.routing")

CHALLENGE = 'Basic realm="SynthIQ DICOMweb", charset="UTF-8"'
MAX_AUTHORIZATION = 4096


async def client_authorized(ctx: Context, request: web.Request) -> bool:
    if not ctx.pool.requires_auth:
        return True
    header = request.headers.get("Authorization", "")
    user = None
    if header and len(header) <= MAX_AUTHORIZATION and ctx.check is not None:
        user = await ctx.run_blocking(ctx.check, header, source_ip(request))
        if user is not None:
            request[USER] = user  # the audit trail names the client by it
    if user is None:
        logger.warning("DICOMweb unauthorized pool=%s source_ip=%s %s %r: %s", ctx.pool.id, source_ip(request),
                       request.method, request.path[:200], "bad credentials" if header else "no credentials")
        ctx.relay.telemetry.invalid_input(service="DICOMweb", reason="unauthorized")
    return user is not None


def unauthorized() -> web.Response:
    return web.Response(status=401, text="authentication required\n", headers={"WWW-Authenticate": CHALLENGE})
