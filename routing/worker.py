"""One runproxy event loop: the relay, the DICOMweb front door, the router and its hot
cache, the counters, and their chores. ``--workers 1`` runs one in the supervising process
(``routing.supervisor``), ``--workers N`` forks N, each with its own.

The loop's objects change only on the loop: blocking work (the database, the backends'
probes, the config file) runs on the housekeeping thread and its result is applied by the
coroutine that awaited it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections

from affinity.bindings import Bindings
from affinity.journal import BindingJournal, journal_path
from affinity.services import BINDING_PURGE_SECONDS, bindings_purge_expired
from health.services import HeartbeatPolicy
from health.watch import StalenessWatch
from pools.config import Config, ConfigError, PoolConfig, config_load
from routing import logqueue
from routing.commitments import DatabaseCommitmentStore, commitments_purge
from routing.counters import Snapshot
from routing.credentials import credentials_check
from routing.dicomweb.context import WebPool
from routing.dicomweb.server import DicomWebServer
from routing.listeners import (
    StartupError,
    bind_listener,
    dicom_web_changed,
    pool_listener,
    web_address,
    web_pool,
)
from routing.probing import Prober
from routing.relay.quota import AddressCounts
from routing.relay.server import NetworkSettings, PoolOffer, Relay
from routing.router import Router
from routing.services import routing_activity_purge
from routing.telemetry import Telemetry
from synthiq_project.repeating import Repeating

logger = logging.getLogger("synthiq.routing")

REFRESH_SECONDS = 1.0
PUBLISH_SECONDS = 2.0
T = TypeVar("T")


def purge_expired(*, window_hours: float, failing: Repeating) -> None:
    """Drop what has outlived its window: bindings, routing activity, commitment transactions."""
    now = dt.datetime.now(dt.UTC)
    try:
        bindings_purge_expired(window_hours=window_hours, now=now)
        routing_activity_purge(now=now)
        commitments_purge(now=now)
    except Exception as exc:
        failing.failed(exc)
    else:
        failing.ok()


def reread(path: str) -> Config | None:
    """A worker's reload: the file its parent has already validated and synced."""
    try:
        return config_load(path=path)
    except ConfigError:
        return None


@dataclass
class WorkerSetup:
    """What the supervisor hands a worker."""

    config: Config
    sockets: dict[str, socket.socket]  # the pools' DICOM listeners
    web_sockets: dict[str, socket.socket]  # the pools' DICOMweb listeners
    prober: Prober
    per_address: AddressCounts
    audit: Any  # routing.audit's trail
    staleness: StalenessWatch
    grace_seconds: float
    stopping: threading.Event
    read_config: Callable[[], Config | None]  # on a reload: the new config, or None (nothing to apply)
    purge: bool  # this loop purges expired rows (one process; with workers the supervisor does)
    channel: socket.socket | None = None  # from the parent: reloads, with the sockets of the listeners added


class Worker:
    def __init__(self, setup: WorkerSetup):
        self.setup = setup
        self.config = setup.config
        self.network = NetworkSettings(**setup.config.network.model_dump())
        self.refresh_failing = Repeating(logger, "snapshot refresh failed, routing on the last one")
        self.purge_failing = Repeating(logger, "purge failed")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="housekeeping")
        self.handed: dict[str, socket.socket] = {}  # listening sockets the parent bound for pools a reload added
        self.handed_web: dict[str, socket.socket] = {}  # and for DICOMweb listeners a reload added or moved
        self.tasks_now = 0
        self._reloads: set[asyncio.Task[None]] = set()
        window = setup.config.study_cache_window_hours
        self.bindings = Bindings(window_hours=window, journal=BindingJournal(
            journal_path(settings.VAR_DIR, settings.DATABASES["default"]), window_hours=window))
        self.router = Router(bindings=self.bindings, heartbeat_timeout=setup.config.heartbeat_timeout_seconds)
        self.telemetry = Telemetry()
        self.telemetry.audit = setup.audit
        # A pool added by a reload has no socket in a worker started since (see _socket_for).
        pools = [p for p in setup.config.pools if p.id in setup.sockets]
        offers = {p.id: setup.prober.offer(p) for p in pools}
        self.relay = Relay(pools=[pool_listener(p) for p in pools], network=self.network, placement=self.router,
                           telemetry=self.telemetry, offers=offers, log_patient_id=settings.SYNTHIQ_LOG_PATIENT_ID,
                           per_address=setup.per_address, commitments=DatabaseCommitmentStore())
        self.dicomweb = DicomWebServer(pools=[web_pool(p) for p in setup.config.pools if p.id in setup.web_sockets],
                                       relay=self.relay, network=self.network, check=credentials_check)

    @property
    def pool_ids(self) -> list[str]:
        return [p.id for p in self.config.pools]

    async def _blocking(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)

    async def serve(self, *, ready: Callable[[], None]) -> None:
        listener = logqueue.start()  # log lines leave the loop through a queue
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_loop, sig, stop)
        self._listen_for_reloads(loop)
        if self.setup.stopping.is_set():
            stop.set()
        await self._blocking(self._refresh_router)
        await self.relay.start(self.setup.sockets)
        await self.dicomweb.start(self.setup.web_sockets)
        logger.info("serving on %s's event loop", type(loop).__module__.split(".")[0])  # uvloop or asyncio
        ready()
        tasks = [asyncio.ensure_future(chore) for chore in self._chores()]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await self.dicomweb.stop()
            await self.relay.stop(grace_seconds=self.setup.grace_seconds)
            self.router.stop()
            await self._blocking(self.bindings.flush)
            await self._publish(stopped=True)
            self.executor.shutdown(wait=True)
            connections.close_all()
            listener.stop()

    def _stop_loop(self, sig: int, stop: asyncio.Event) -> None:
        logger.info("signal %s: stopping", signal.Signals(sig).name)
        self.setup.stopping.set()
        stop.set()

    # -- chores ---------------------------------------------------------------------------
    def _chores(self) -> list[Awaitable[None]]:
        chores = [self._every(REFRESH_SECONDS, self._refresh), self._every(PUBLISH_SECONDS, self._publish)]
        if self.setup.purge:
            chores.append(self._every(BINDING_PURGE_SECONDS, self._purge, first=5.0))
        chores.append(self._count_tasks())
        return chores

    @staticmethod
    async def _every(seconds: float, chore: Callable[[], Awaitable[None]], first: float = 0.0) -> None:
        await asyncio.sleep(first or seconds)
        while True:
            try:
                await chore()
            except Exception:
                logger.exception("%s failed", getattr(chore, "__name__", chore))
            await asyncio.sleep(seconds)

    async def _count_tasks(self) -> None:
        """How many asyncio tasks this worker runs (published: a leak shows as growth)."""
        while True:
            self.tasks_now = len(asyncio.all_tasks())
            await asyncio.sleep(PUBLISH_SECONDS)

    def _refresh_router(self) -> None:
        try:
            self.router.refresh(pool_ids=self.pool_ids)
        except Exception as exc:  # a database outage must not stop routing
            self.refresh_failing.failed(exc)
        else:
            self.refresh_failing.ok()

    def _refresh_blocking(self) -> list[PoolOffer]:
        self._refresh_router()
        self.bindings.flush()
        return self.setup.prober.reprobe(self.config, self.router)

    async def _refresh(self) -> None:
        """The router's snapshot, the write-behind bindings, and backends that came back
        asked again: the relay negotiates with what they say from now on."""
        for offer in await self._blocking(self._refresh_blocking):
            self.relay.offers[offer.pool_id] = offer

    def _state(self) -> Snapshot:
        """What this loop holds now, for the published snapshot (read on the loop)."""
        return {
            "cache_size": len(self.bindings.cache), "db_ok": self.bindings.db_ok, "db_error": self.bindings.db_error,
            "pending_bindings": self.bindings.pending_writes(),
            "pending_connections": self.relay.pending_connections,
            "held_associations": sum(self.relay.held.values()), "tasks": self.tasks_now,
            "services": self.setup.prober.published(self.config, self.relay.offers),
            "audit": self.setup.audit.stats(),
        }

    async def _publish(self, *, stopped: bool = False) -> None:
        state = self._state()
        listeners = [{"pool": p.id, "ae_title": p.ae_title, "port": p.port, "accepting": self.relay.accepting}
                     for p in self.relay.pools]
        pool_ids = self.pool_ids

        def publish() -> None:
            extra: Snapshot = {**state, **self.setup.staleness.status(pool_ids)}  # type: ignore[typeddict-item]
            self.telemetry.publish(extra=extra, listeners=listeners, stopped=stopped)
        await self._blocking(publish)

    async def _purge(self) -> None:
        await self._blocking(lambda: purge_expired(window_hours=self.config.study_cache_window_hours,
                                                   failing=self.purge_failing))

    # -- reload (SIGHUP) ------------------------------------------------------------------
    def _listen_for_reloads(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGHUP: re-read the config and apply it without dropping an association. In one
        process this loop hears the signal; a worker ignores it and its parent says when,
        with the sockets of the pools it added."""
        def on_hup() -> None:
            task = asyncio.ensure_future(self.reload())
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
        if self.setup.channel is None:
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        else:
            loop.add_reader(self.setup.channel.fileno(), self._from_parent, self.setup.channel, on_hup)

    def _from_parent(self, channel: socket.socket, reload: Callable[[], None]) -> None:
        """A worker's channel from its parent: a reload, with the sockets of the DICOM and
        DICOMweb listeners it bound (``Workers.reload``)."""
        try:
            message, fds, _, _ = socket.recv_fds(channel, 65536, 512)
        except OSError as exc:
            logger.warning("the channel from the parent failed: %s", exc)
            message, fds = b"", []
        if not message:  # the parent is gone (the worker stops too: see workers._exit_with_parent)
            asyncio.get_running_loop().remove_reader(channel.fileno())
            return
        listeners = json.loads(message)
        keyed = [(self.handed, pool_id) for pool_id in listeners["dicom"]] + [
            (self.handed_web, pool_id) for pool_id in listeners["web"]]
        for (handed, pool_id), fd in zip(keyed, fds, strict=True):
            handed[pool_id] = socket.socket(fileno=fd)
        reload()

    async def reload(self) -> None:
        """Apply the file to this event loop: pools added (listening at once), removed (the
        listener closes, its associations go on), changed (new connections get the new AE
        title, allow-list, TLS, services); network settings for new associations; backends
        through the router's next refresh. Associations already open are not touched."""
        new = await self._blocking(self.setup.read_config)
        if new is None:
            return
        old, self.config = self.config, new
        self.network = NetworkSettings(**new.network.model_dump())
        self.relay.network = self.network
        self.router.heartbeat_timeout = new.heartbeat_timeout_seconds
        self.setup.staleness.policy = HeartbeatPolicy(new.heartbeat_interval_seconds, new.heartbeat_timeout_seconds,
                                                      new.study_cache_window_hours)
        await self._blocking(self._refresh_router)
        await self._apply_pools(old, new)
        await self._apply_dicom_web(old, new)
        for unused in [*self.handed.values(), *self.handed_web.values()]:
            unused.close()
        self.handed.clear()
        self.handed_web.clear()
        logger.info("reload: applied to this process's listeners (pools: %s)", ", ".join(self.pool_ids))

    async def _apply_pools(self, old: Config, new: Config) -> None:
        before = {p.id: p for p in old.pools}
        for pool in new.pools:
            was = before.pop(pool.id, None)
            if was is not None and (was.host, was.port) == (pool.host, pool.port):
                if was != pool:
                    self.relay.update_pool(pool_listener(pool), self.setup.prober.offer(pool))
                continue
            if was is not None:
                self.relay.remove_pool(pool.id)
            sock = self._socket_for(pool)
            if sock is not None:
                offer = await self._blocking(self.setup.prober.probe_pool, pool, self.router)
                self.relay.add_pool(pool_listener(pool), sock, offer)
        for gone in before:
            self.relay.remove_pool(gone)

    async def _apply_dicom_web(self, old: Config, new: Config) -> None:
        """DICOMweb listeners a reload added, moved, changed (its base path, TLS, limits, the
        backends' URLs or credentials) or removed: each served anew from the new config;
        requests in flight finish on the old site (``DicomWebServer.retire_pool``)."""
        before, after = {p.id: p for p in old.pools}, {p.id: p for p in new.pools}
        for pool_id in dicom_web_changed(old=old, new=new):
            pool = after.get(pool_id)
            if pool is None or pool.dicom_web is None:
                self.dicomweb.retire_pool(pool_id)
                logger.info("reload: pool %s: DICOMweb listener removed", pool_id)
                continue
            try:
                view = web_pool(pool)
            except (StartupError, OSError) as exc:  # a TLS certificate that does not load: the old settings stay
                logger.error("reload: pool %s: DICOMweb: %s; its DICOMweb settings are unchanged", pool_id, exc)
                continue
            await self._serve_web(before.get(pool_id), pool, view)

    async def _serve_web(self, was: PoolConfig | None, pool: PoolConfig, view: WebPool) -> None:
        """Serve a pool's new DICOMweb settings; where its listener moved and no socket could
        be bound (logged), the old one is retired too, as the supervisor's copy was."""
        sock = self._web_socket_for(was, pool)
        if sock is None:
            self.dicomweb.retire_pool(pool.id)
            return
        try:
            await self.dicomweb.serve_pool(view, sock)
        except OSError as exc:
            sock.close()
            logger.error("reload: pool %s: DICOMweb listener not started: %s", pool.id, exc)

    def _web_socket_for(self, was: PoolConfig | None, pool: PoolConfig) -> socket.socket | None:
        """The DICOMweb listening socket for a pool's new settings: at the same address, the
        one it serves on now, duplicated (the new site accepts before the old one closes);
        at a new one, the socket the parent bound and handed over, or this one process binds."""
        if was is not None and web_address(was) == web_address(pool) and pool.id in self.dicomweb.sockets:
            return self.dicomweb.sockets[pool.id].dup()
        if self.setup.channel is not None:
            return self.handed_web.pop(pool.id, None)
        try:
            return bind_listener(pool, dicom_web=True)
        except StartupError as exc:
            logger.error("reload: %s; the rest of the file is applied", exc)
            return None

    def _socket_for(self, pool: PoolConfig) -> socket.socket | None:
        """A listening socket for a pool the reload added or moved: the parent bound it (a
        port in use is logged there) and handed it over, or this one process binds it."""
        if self.setup.channel is not None:
            return self.handed.pop(pool.id, None)
        try:
            return bind_listener(pool)
        except StartupError as exc:
            logger.error("reload: %s; the rest of the file is applied", exc)
            return None
