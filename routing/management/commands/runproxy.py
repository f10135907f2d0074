"""runproxy: every pool's DICOM listener, plus optionally the admin web app.

Modelled on a long-running worker: SIGTERM/SIGINT set a flag, work is split into small
methods, and shutdown waits (bounded) for operations in flight before releasing the
backend associations and flushing writes.

Start-up, in order: validate the config and sync it to the database; bind every pool's
listening socket (once, here: a port another process holds is a clear error, never
silently shared); one heartbeat round (a cold start would otherwise pile onto the first
backend); probe the backends' transfer syntaxes. Then either serve on this process's
event loop (``--workers 1``) or fork N workers that inherit the sockets, each with its
own loop, hot cache and counters (published to the database, summed by /api/status).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from affinity.services import bindings_purge_expired
from affinity.store import AffinityStore
from health.runner import InlineHeartbeats
from health.selectors import heartbeat_staleness
from health.services import HeartbeatPolicy
from pools.config import Config, ConfigError, config_load
from pools.services import config_sync
from routing import logqueue
from routing.dicom import netopts
from routing.relay.server import NetworkSettings, PoolListener, Relay
from routing.router import Router
from routing.services import routing_activity_purge
from routing.stats import Stats
from routing.syntax_probe import probe_pool
from routing.workers import Workers

logger = logging.getLogger("synthiq.routing")

REFRESH_SECONDS = 1.0
PUBLISH_SECONDS = 2.0
PURGE_SECONDS = 600.0
# While heartbeats are stale, repeat the error this often (not at every publish).
STALE_LOG_SECONDS = 30.0


def _parse_http(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CommandError(f"--http: expected HOST:PORT, got {value!r}")
    return host, int(port)


def network_settings(network: dict) -> NetworkSettings:
    return NetworkSettings(
        acse_timeout=network["AcseTimeoutSeconds"],
        dimse_timeout=network["DimseTimeoutSeconds"],
        network_timeout=network["NetworkTimeoutSeconds"],
        connect_timeout=network["ConnectTimeoutSeconds"],
        max_associations=network["MaxAssociations"],
        max_pdu=network["MaxPduBytes"],
        handshake_timeout=network["HandshakeTimeoutSeconds"],
        max_pending=network["MaxPendingAssociations"],
        max_pending_per_address=network["MaxPendingPerAddress"],
        release_timeout=network["ReleaseTimeoutSeconds"],
        outbound_idle=network["OutboundIdleSeconds"],
        hold_bytes=network["HeaderHoldBytes"],
    )


def bind_listener(pool: dict) -> socket.socket:
    """The pool's listening socket, bound without SO_REUSEPORT: a port that another
    process (a stale runproxy, a PACS) holds is an error here, never a silent share."""
    host, port = pool["Host"], pool["Port"]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; not REUSEPORT
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise CommandError(f"pool {pool['Id']}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def raise_open_files_limit() -> None:
    """1,000+ sockets pass the common soft limit of 1,024 open files, after which asyncio
    stops accepting for a second at a time: raise the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            logger.info("open files limit raised from %d to %d", soft, hard)
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open files limit from %d: %s", soft, exc)


class Command(BaseCommand):
    help = "Run SynthIQ's DICOM listeners (and optionally the admin web app)."

    def add_arguments(self, parser):
        parser.add_argument("--config", default=settings.SYNTHIQ_CONFIG or None,
                            help="JSON config file (default: $SYNTHIQ_CONFIG)")
        web = parser.add_mutually_exclusive_group()
        web.add_argument("--http", metavar="HOST:PORT", help="also serve the admin web app here")
        web.add_argument("--no-http", action="store_true", help="no web app (the default)")
        parser.add_argument("--grace-seconds", type=float, default=10.0,
                            help="how long operations in flight may take to finish on shutdown")
        parser.add_argument("--workers", type=int, default=1,
                            help="worker processes, each with its own event loop (default 1)")

    def handle(self, *args, config, http, no_http, grace_seconds, workers, **options):
        if not config:
            raise CommandError("--config: no config file given (or set SYNTHIQ_CONFIG)")
        if workers < 1:
            raise CommandError("--workers: must be at least 1")
        try:
            self.config: Config = config_load(path=config)
        except ConfigError as exc:
            raise CommandError("invalid config, nothing changed:\n  " + "\n  ".join(exc.errors)) from None
        self.grace_seconds = grace_seconds
        self.stopping = threading.Event()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        raise_open_files_limit()

        config_sync(config=self.config)
        self.pool_ids = [p["Id"] for p in self.config.pools]
        sockets = {p["Id"]: bind_listener(p) for p in self.config.pools}
        self.network = network_settings(self.config.network)
        self.heartbeat_policy = HeartbeatPolicy(self.config.heartbeat_interval, self.config.heartbeat_timeout,
                                                self.config.study_cache_window_hours)
        self.heartbeats: InlineHeartbeats | None = None
        self.heartbeats_since = dt.datetime.now(dt.UTC)
        self.stale_logged_at: float | None = None
        if settings.SYNTHIQ_INLINE_HEARTBEATS:
            # One full round before accepting: a cold start would otherwise find no
            # healthy backend and pile every new study onto the first one (fallback).
            self.heartbeats = InlineHeartbeats(pool_ids=self.pool_ids, policy=self.heartbeat_policy)
            self.heartbeats.run_once()
        else:
            logger.info("heartbeats come from Celery beat (CELERY_BROKER_URL is set)")
        self.syntax_ranks = self.probe_syntaxes()
        if workers == 1:
            self.serve_here(sockets, http)
        else:
            self.serve_in_workers(sockets, http, workers)

    def _on_signal(self, signum, frame) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def probe_syntaxes(self) -> dict[str, dict[str, int]]:
        router = Router(store=AffinityStore(window_hours=self.config.study_cache_window_hours),
                        heartbeat_timeout=self.config.heartbeat_timeout)
        router.refresh(pool_ids=self.pool_ids)
        return {
            pool["Id"]: probe_pool(pool_id=pool["Id"], calling_ae=pool["AeTitle"],
                                   backends=[router.address(s.id) for s in router.states(pool["Id"]) if s.enabled])
            for pool in self.config.pools
        }

    # -- one process ----------------------------------------------------------------------
    def serve_here(self, sockets: dict[str, socket.socket], http: str | None) -> None:
        if self.heartbeats is not None:
            self.heartbeats.start()
        web = self.start_web(http) if http else None
        try:
            asyncio.run(self.serve(sockets, ready=lambda: self._say_ready(), purge=True))
        finally:
            if self.heartbeats is not None:
                self.heartbeats.stop()
            if web is not None:
                web.close()
            logger.info("runproxy stopped")

    def _say_ready(self) -> None:
        self.stdout.write(f"runproxy ready: pools={','.join(self.pool_ids)}", ending="\n")
        self.stdout.flush()

    # -- several processes ------------------------------------------------------------------
    def serve_in_workers(self, sockets: dict[str, socket.socket], http: str | None, count: int) -> None:
        connections.close_all()  # no database connection may cross a fork

        def worker(index: int, ready: Callable[[], None]) -> int:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            asyncio.run(self.serve(sockets, ready=ready, purge=False, worker=index))
            return 0

        pool = Workers(count=count, target=worker, stopping=self.stopping, grace_seconds=self.grace_seconds + 10)
        pool.start()
        for sock in sockets.values():
            sock.close()  # the workers hold them now
        if self.heartbeats is not None:
            self.heartbeats.start()
        web = self.start_web(http) if http else None
        try:
            if pool.wait_ready(timeout=60):
                self._say_ready()
            next_purge = time.monotonic() + 5
            while not self.stopping.wait(0.2):
                pool.reap()
                if time.monotonic() >= next_purge:
                    self.purge()
                    next_purge = time.monotonic() + PURGE_SECONDS
        finally:
            pool.stop()
            if self.heartbeats is not None:
                self.heartbeats.stop()
            if web is not None:
                web.close()
            logger.info("runproxy stopped (%d workers)", count)

    # -- the event loop of a worker ---------------------------------------------------------
    async def serve(self, sockets: dict[str, socket.socket], *, ready: Callable[[], None], purge: bool,
                    worker: int | None = None) -> None:
        listener = logqueue.start()  # log lines leave the loop through a queue
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_loop, sig, stop)
        if self.stopping.is_set():
            stop.set()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="housekeeping")
        self.store = AffinityStore(window_hours=self.config.study_cache_window_hours)
        self.router = Router(store=self.store, heartbeat_timeout=self.config.heartbeat_timeout)
        self.stats = Stats()
        await loop.run_in_executor(executor, self.refresh)
        pools = [
            PoolListener(p["Id"], p["AeTitle"], p["Host"], p["Port"], tuple(p["AllowedCallingAeTitles"]),
                         netopts.server_tls(p["Tls"]) if p.get("Tls") else None)
            for p in self.config.pools
        ]
        self.relay = Relay(pools=pools, network=self.network, placement=self.router, stats=self.stats,
                           syntax_ranks=self.syntax_ranks)
        await self.relay.start(sockets)
        ready()
        chores = [self._every(REFRESH_SECONDS, executor, self.refresh),
                  self._every(PUBLISH_SECONDS, executor, self.publish)]
        if purge:
            chores.append(self._every(PURGE_SECONDS, executor, self.purge, first=5.0))
        tasks = [asyncio.ensure_future(chore) for chore in chores]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await self.relay.stop(grace_seconds=self.grace_seconds)
            self.router.stop()
            await loop.run_in_executor(executor, self.store.flush)
            await loop.run_in_executor(executor, lambda: self.publish(stopped=True))
            executor.shutdown(wait=True)
            connections.close_all()
            listener.stop()

    def _stop_loop(self, sig: int, stop: asyncio.Event) -> None:
        logger.info("signal %s: stopping", signal.Signals(sig).name)
        self.stopping.set()
        stop.set()

    @staticmethod
    async def _every(seconds: float, executor: ThreadPoolExecutor, chore: Callable[[], None],
                     first: float = 0.0) -> None:
        """Run a blocking chore on the housekeeping thread, every ``seconds``."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(first or seconds)
        while True:
            try:
                await loop.run_in_executor(executor, chore)
            except Exception:
                logger.exception("%s failed", getattr(chore, "__name__", chore))
            await asyncio.sleep(seconds)

    # -- chores ---------------------------------------------------------------------------
    def refresh(self) -> None:
        try:
            self.router.refresh(pool_ids=self.pool_ids)
        except Exception as exc:  # a database outage must not stop routing
            logger.warning("snapshot refresh failed, routing on the last one: %s", exc)
        self.store.flush()

    def heartbeat_status(self) -> dict:
        """Stale heartbeats (no round for three intervals: beat dead, worker gone) are
        shouted, not silently read as "all healthy"; routing meanwhile sees every row
        go stale by itself (health.selectors.backend_is_healthy)."""
        timing = {"heartbeat_interval": self.heartbeat_policy.interval_seconds,
                  "heartbeat_timeout": self.heartbeat_policy.timeout_seconds,
                  "heartbeat_mode": "inline" if self.heartbeats else "celery"}
        try:
            stale = heartbeat_staleness(pool_ids=self.pool_ids, now=dt.datetime.now(dt.UTC),
                                        interval_seconds=self.heartbeat_policy.interval_seconds,
                                        since=self.heartbeats_since)
        except Exception as exc:  # database down: say so rather than claim freshness
            return timing | {"heartbeat_stale": None, "heartbeat_error": str(exc)}
        now = time.monotonic()
        if not stale:
            if self.stale_logged_at is not None:
                logger.warning("heartbeats are running again")
            self.stale_logged_at = None
        elif self.stale_logged_at is None or now - self.stale_logged_at >= STALE_LOG_SECONDS:
            self.stale_logged_at = now
            ages = ", ".join(f"{p}: {'never' if a is None else f'{a:.0f}s ago'}" for p, a in stale.items())
            logger.error("HEARTBEATS STALE: no heartbeat round for over %.0fs (%s) - %s; every backend "
                         "will read unhealthy", 3 * self.heartbeat_policy.interval_seconds, ages,
                         "is the inline heartbeat thread stuck?" if self.heartbeats
                         else "is Celery beat (and a worker) running?")
        return timing | {"heartbeat_stale": bool(stale), "heartbeat_stale_pools": sorted(stale)}

    def publish(self, *, stopped: bool = False) -> None:
        self.stats.publish(
            extra={
                "cache_size": len(self.store.cache),
                "db_ok": self.store.db_ok,
                "db_error": self.store.db_error,
                "pending_bindings": self.store.pending_writes(),
                "pending_connections": self.relay.pending_connections,
            } | self.heartbeat_status(),
            listeners=[{"pool": p.id, "ae_title": p.ae_title, "port": p.port,
                        "accepting": self.relay.accepting} for p in self.relay.pools],
            stopped=stopped,
        )

    def purge(self) -> None:
        now = dt.datetime.now(dt.UTC)
        try:
            bindings_purge_expired(window_hours=self.config.study_cache_window_hours, now=now)
            routing_activity_purge(now=now)
        except Exception as exc:
            logger.warning("purge failed: %s", exc)

    # -- web app --------------------------------------------------------------------------
    def start_web(self, http: str):
        from waitress.server import create_server

        from synthiq_project.wsgi import application

        host, port = _parse_http(http)
        server = create_server(application, host=host, port=port, threads=4)
        threading.Thread(target=server.run, name="http", daemon=True).start()
        logger.info("admin web app on http://%s:%d/", host, port)
        return server
