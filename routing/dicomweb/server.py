"""Each pool's DICOMweb listener: an aiohttp server on a socket runproxy bound, on the
relay's event loop, sharing its placement (one study map for DIMSE and DICOMweb), its
counters and its network settings; one HTTP client to the backends."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from aiohttp import web

from routing.dicomweb.auth import client_authorized, unauthorized
from routing.dicomweb.context import Context, CredentialCheck, WebPool, source_ip
from routing.dicomweb.query import LEVEL_KEYS, qido
from routing.dicomweb.retrieve import wado
from routing.dicomweb.stow import Stow
from routing.relay.server import NetworkSettings, Relay

logger = logging.getLogger("synthiq.routing")

CONTEXT = web.AppKey("context", Context)
# Keep-alive connections to the backends, at most, and per backend.
CLIENT_CONNECTIONS = 256
# A retired site's requests in flight (a reload moved, changed or removed its pool; stopping) are cut after this.
RETIRE_SECONDS = 5.0


def is_query(segments: list[str]) -> bool:
    """QIDO-RS paths: studies, series, instances, studies/{s}/series, studies/{s}/instances,
    studies/{s}/series/{se}/instances."""
    if len(segments) == 1:
        return segments[0] in LEVEL_KEYS
    return (len(segments) == 3 and segments[0] == "studies" and segments[2] in ("series", "instances")) or (
        len(segments) == 5 and segments[0] == "studies" and segments[2] == "series" and segments[4] == "instances")


class DicomWebServer:
    def __init__(self, *, pools: list[WebPool], relay: Relay, network: NetworkSettings,
                 check: CredentialCheck | None):
        self.pools, self.relay, self.network, self.check = pools, relay, network, check
        self.runners: dict[str, web.AppRunner] = {}  # by pool id
        self.sockets: dict[str, socket.socket] = {}  # the listening socket each pool's site serves on
        self._retiring: set[asyncio.Task[None]] = set()
        self.in_flight: Counter[str] = Counter()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dicomweb-auth")
        self.session: aiohttp.ClientSession | None = None

    @property
    def per_address(self) -> int:
        """Requests in flight from one address, at most (as MaxAssociationsPerAddress)."""
        return self.network.max_associations_per_address or max(1, self.network.max_associations // 4)

    async def start(self, sockets: dict[str, socket.socket]) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CLIENT_CONNECTIONS, enable_cleanup_closed=True),
            auto_decompress=False, skip_auto_headers=("User-Agent",))
        for pool in self.pools:
            sock = sockets.get(pool.id)
            if sock is not None:
                await self.serve_pool(pool, sock)

    async def serve_pool(self, pool: WebPool, sock: socket.socket) -> None:
        """Serve the pool's DICOMweb on a listening socket: at start, or on a reload that
        added, moved or changed it. A pool served already is served anew (its base path,
        TLS, backends) and the old site retired once the new one accepts (with the same
        socket duplicated, the port never refuses a client meanwhile)."""
        assert self.session is not None
        app = web.Application(client_max_size=1024 * 1024)  # only a read() of a whole body; STOW streams
        app[CONTEXT] = Context(pool, self.relay, self.session, self.network, self.executor, self.check)
        app.router.add_route("*", pool.base_path + "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=RETIRE_SECONDS)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=pool.tls).start()
        self.retire_pool(pool.id)
        self.runners[pool.id], self.sockets[pool.id] = runner, sock
        logger.info("DICOMweb for pool %s on %s://%s:%d%s", pool.id, "https" if pool.tls else "http",
                    pool.host, pool.port, pool.base_path or "/")

    def retire_pool(self, pool_id: str) -> None:
        """Stop accepting for the pool (its socket closes in this process); the requests in
        flight finish on a task of their own, cut after RETIRE_SECONDS."""
        runner = self.runners.pop(pool_id, None)
        self.sockets.pop(pool_id, None)
        if runner is None:
            return
        task = asyncio.ensure_future(runner.cleanup())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def stop(self) -> None:
        for pool_id in list(self.runners):
            self.retire_pool(pool_id)
        if self._retiring:
            await asyncio.wait(set(self._retiring))
        if self.session is not None:
            await self.session.close()
        self.executor.shutdown(wait=False)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        address = source_ip(request)
        if self.in_flight[address] >= self.per_address:
            logger.warning("DICOMweb pool=%s source_ip=%s: %d requests in flight from the address, refused",
                           ctx.pool.id, address, self.in_flight[address])
            self.relay.telemetry.connection_refused()
            return web.Response(status=503, text="too many requests in flight from this address\n",
                                headers={"Retry-After": "5"})
        self.in_flight[address] += 1
        try:
            return await self._dispatch(ctx, request)
        finally:
            self.in_flight[address] -= 1
            if not self.in_flight[address]:
                del self.in_flight[address]

    async def _dispatch(self, ctx: Context, request: web.Request) -> web.StreamResponse:
        if not self.relay.accepting:
            return web.Response(status=503, text="stopping\n")
        if not await client_authorized(ctx, request):
            return unauthorized()
        segments = request.match_info["tail"].split("/")
        if request.method == "POST" and segments[0] == "studies" and len(segments) <= 2:
            return await Stow(ctx, request, study_uid=segments[1] if len(segments) == 2 else None).run()
        if request.method in ("GET", "HEAD"):
            if is_query(segments):
                return await qido(ctx, request, segments)
            if segments[0] == "studies" and len(segments) >= 2:
                return await wado(ctx, request, segments)
            return web.Response(status=404, text="not a DICOMweb resource SynthIQ relays\n")
        if segments[0] in LEVEL_KEYS:
            return web.Response(status=405, text="method not relayed\n", headers={"Allow": "GET, HEAD, POST"})
        return web.Response(status=404, text="not a DICOMweb resource SynthIQ relays\n")
