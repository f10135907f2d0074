"""runproxy's process: start-up, the event loop of a worker, its chores, and shutdown.

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
import json
import logging
import os
import resource
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import OperationalError, connections

from affinity.bindings import Bindings
from affinity.journal import BindingJournal, journal_path
from affinity.services import BINDING_PURGE_SECONDS, bindings_purge_expired
from health.runner import InlineHeartbeats
from health.selectors import STALE_INTERVALS, heartbeat_staleness
from health.services import HeartbeatPolicy
from pools.config import Config, ConfigError, PoolConfig, TlsConfig, config_load, differences
from pools.services import config_sync
from routing import audit, logqueue, readiness
from routing.commitments import DatabaseCommitmentStore, commitments_purge
from routing.credentials import credentials_check
from routing.dicom import netopts
from routing.dicom.services import SERVICE_CLASSES, VERIFICATION
from routing.dicomweb.context import WebBackend, WebPool
from routing.dicomweb.server import DicomWebServer
from routing.relay.quota import AddressCounts
from routing.relay.server import NetworkSettings, PoolListener, Relay
from routing.router import Router
from routing.services import routing_activity_purge
from routing.syntax_probe import Abilities, PoolAbilities, pool_abilities, probe_backend
from routing.telemetry import Telemetry, services_view
from routing.verifier import InlineVerifier
from routing.workers import Workers
from synthiq_project import logformat
from synthiq_project.dburl import mask_password
from synthiq_project.repeating import Repeating
from synthiq_project.version import VERSION

logger = logging.getLogger("synthiq.routing")

REFRESH_SECONDS = 1.0
PUBLISH_SECONDS = 2.0
# While heartbeats are stale, repeat the error this often (not at every publish).
STALE_LOG_SECONDS = 30.0


class StartupError(Exception):
    """runproxy cannot start: one line that names the culprit."""


def parse_http(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise StartupError(f"--http: expected HOST:PORT, got {value!r}")
    return host, int(port)


def bind_listener(pool: PoolConfig, *, dicom_web: bool = False) -> socket.socket:
    """The pool's listening socket (or its DICOMweb one), bound without SO_REUSEPORT: a
    port that another process (a stale runproxy, a PACS) holds is an error here, never a
    silent share."""
    host, port = (pool.dicom_web_host, pool.dicom_web.port) if dicom_web and pool.dicom_web else (pool.host, pool.port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; not REUSEPORT
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        what = "DICOMweb: " if dicom_web else ""
        raise StartupError(f"pool {pool.id}: {what}cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def web_pool(pool: PoolConfig) -> WebPool:
    """The DICOMweb front door's view of a pool with DicomWeb (the config requires a URL per backend)."""
    assert pool.dicom_web is not None
    return WebPool(pool.id, pool.dicom_web_host, pool.dicom_web.port, pool.dicom_web.base_path,
                   tuple(WebBackend(b.id, (b.dicom_web_url or "").rstrip("/"), b.dicom_web_username,
                                    b.dicom_web_password) for b in pool.backends if b.enabled),
                   tls=_server_tls(pool.dicom_web.tls) if pool.dicom_web.tls else None,
                   max_body_bytes=pool.dicom_web.max_body_bytes)


def _close_listeners_gone(sockets: dict[str, socket.socket], *, old: Config, new: Config) -> None:
    """Close the listening sockets of pools a reload removed or moved, so their ports
    are freed once the workers close theirs too."""
    was = {p.id: (p.host, p.port) for p in old.pools}
    kept = {p.id: (p.host, p.port) for p in new.pools}
    for pool_id in [pool_id for pool_id in sockets if kept.get(pool_id) != was.get(pool_id)]:
        sockets.pop(pool_id).close()


def dicom_web_changed(*, old: Config, new: Config) -> list[str]:
    """Pools whose DICOMweb settings (the front door, or a backend's URL or credentials) a
    reload changed: the DICOMweb listeners keep what they started with until a restart."""
    def view(config: Config) -> dict[str, tuple[Any, ...]]:
        return {p.id: (p.dicom_web, p.dicom_web_host, tuple(
            (b.id, b.enabled, b.dicom_web_url, b.dicom_web_username, b.dicom_web_password) for b in p.backends))
            for p in config.pools}

    with_dicom_web = {p.id for config in (old, new) for p in config.pools if p.dicom_web}
    before, after = view(old), view(new)
    return sorted(pool_id for pool_id in with_dicom_web if before.get(pool_id) != after.get(pool_id))


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


def _server_tls(tls: TlsConfig) -> ssl.SSLContext:
    if not (tls.certificate and tls.key):
        raise StartupError("a pool's Tls needs Certificate and Key")
    return netopts.server_tls(certificate=tls.certificate, key=tls.key, ca=tls.ca,
                              require_client_certificate=tls.require_client_certificate)


def wait_for_database(*, max_seconds: float) -> None:
    """A database that is not up yet at start (a host booting, a failover) is tried again,
    backing off, for up to ``max_seconds``; each try is logged. Past that: a StartupError
    naming the database (password masked)."""
    db = connections["default"]
    where = mask_password(os.environ.get("DATABASE_URL", "")) or f"{db.settings_dict.get('NAME')}"
    deadline, pause, attempt = time.monotonic() + max_seconds, 0.5, 1
    while True:
        try:
            db.ensure_connection()
            return
        except OperationalError as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupError(f"database {where} unreachable after {max_seconds:.0f}s "
                                   f"({attempt} tries): {why}") from None
            pause = min(pause * 2, 10.0, left)
            logger.warning("database %s unreachable (try %d: %s); trying again in %.0fs", where, attempt, why, pause)
            db.close()
            time.sleep(pause)
            attempt += 1


class ProxyRunner:
    def __init__(self, *, config: Config, grace_seconds: float, say: Callable[[str], None],
                 config_path: str | None = None):
        self.config = config
        self.config_path = config_path  # re-read on SIGHUP
        self.reload_requested = threading.Event()
        self.say = say
        self.grace_seconds = grace_seconds
        self.stopping = threading.Event()
        self.tasks_now = 0
        self.refresh_failing = Repeating(logger, "snapshot refresh failed, routing on the last one")
        self.purge_failing = Repeating(logger, "purge failed")
        self.relay: Relay | None = None
        self.per_address = AddressCounts()  # one process; runproxy --workers makes a shared one
        # A worker: listening sockets its parent handed over for pools a reload added.
        self.handed: dict[str, socket.socket] = {}
        self.audit = audit.NULL_TRAIL  # this process's audit trail (routing.audit), started by run()
        self.web_sockets: dict[str, socket.socket] = {}  # DICOMweb listeners, bound in run()

    def run(self, *, workers: int, http: str | None) -> None:
        """Start up (see the module docstring) and serve until SIGTERM/SIGINT."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reload_requested.set())
        logger.info("SynthIQ %s starting", VERSION)
        raise_open_files_limit()
        self.web = self.bind_web(http) if http else None
        wait_for_database(max_seconds=settings.SYNTHIQ_DB_WAIT_SECONDS)
        config_sync(config=self.config)
        self.pool_ids = [p.id for p in self.config.pools]
        sockets = {p.id: bind_listener(p) for p in self.config.pools}
        # DICOMweb listeners: bound once here too, inherited by the workers. A reload does not
        # add, move or remove them (a restart does).
        self.web_sockets = {p.id: bind_listener(p, dicom_web=True) for p in self.config.pools if p.dicom_web}
        # The DICOMweb listeners are those bound here (a reload does not change them).
        self.web_listeners = [readiness.Listener(p.id, p.ae_title, p.dicom_web_host, p.dicom_web.port,
                                                 p.dicom_web.tls is not None, "DICOMweb", p.dicom_web.base_path)
                              for p in self.config.pools if p.dicom_web is not None]
        readiness.register([readiness.Listener(p.id, p.ae_title, p.host, p.port, p.tls is not None)
                            for p in self.config.pools] + self.web_listeners)
        self.network = NetworkSettings(**self.config.network.model_dump())
        self.heartbeat_policy = HeartbeatPolicy(self.config.heartbeat_interval_seconds,
                                                self.config.heartbeat_timeout_seconds,
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
        # The study ledger's verification: beside the heartbeats (this process or Celery beat).
        self.verifier = InlineVerifier(pool_ids=self.pool_ids, settings=self.config.reconciliation,
                                       heartbeat_timeout=self.config.heartbeat_timeout_seconds) \
            if settings.SYNTHIQ_INLINE_HEARTBEATS else None
        self.probe_router = Router(bindings=Bindings(window_hours=self.config.study_cache_window_hours),
                                   heartbeat_timeout=self.config.heartbeat_timeout_seconds)
        self.probe_router.refresh(pool_ids=self.pool_ids)
        self.backend_abilities: dict[str, Abilities | None] = {}
        self.probed_healthy: dict[str, bool] = {}
        self.abilities = {pool.id: self.probe_pool(pool, self.probe_router) for pool in self.config.pools}
        self.audit = audit.install(audit.trail_start(self.config.audit, spool_name="main"))
        try:
            if workers == 1:
                self.serve_here(sockets, http)
            else:
                self.serve_in_workers(sockets, http, workers)
        finally:
            self.audit.application_stopped(version=VERSION)
            self.audit.stop()

    def _on_signal(self, signum, frame) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def probe_pool(self, pool: PoolConfig, router: Router, *, only_new: bool = False) -> PoolAbilities:
        """Ask the pool's enabled backends what they accept. With ``only_new``, ask again
        only those that came back healthy since they were last asked, or could not be
        asked; returns the pool's abilities (unchanged ones included)."""
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
        return pool_abilities(pool_id=pool.id, found=[self.backend_abilities.get(b) for b in enabled])

    def reprobe(self) -> None:
        """Backends that came back get asked again; the relay negotiates with what they say."""
        for pool in self.config.pools:
            states = self.router.states(pool.id)
            if not any(s.enabled and s.healthy and (not self.probed_healthy.get(s.id, False)
                                                     or self.backend_abilities.get(s.id) is None) for s in states):
                for s in states:
                    self.probed_healthy[s.id] = s.healthy
                continue
            self.abilities[pool.id] = self.probe_pool(pool, self.router, only_new=True)
            self.relay.syntax_ranks[pool.id] = self.abilities[pool.id].ranks
            self.relay.services[pool.id] = self.services_passed(pool)

    def services_passed(self, pool: PoolConfig) -> tuple[str, ...]:
        """C-ECHO, plus each switched-on service class that at least one backend offers."""
        offered = self.abilities[pool.id].services
        switches = pool.services.model_dump()
        return (VERIFICATION, *(uid for name, uids in SERVICE_CLASSES.items() if switches[name]
                                for uid in uids if uid in offered))

    def services_published(self) -> dict[str, dict[str, Any]]:
        """Per pool, which non-storage services are passed and why not (for the dashboard)."""
        out = {}
        for pool in self.config.pools:
            enabled = [b.id for b in pool.backends if b.enabled]
            found = {b: self.backend_abilities.get(b) for b in enabled}
            out[pool.id] = services_view(
                switches=pool.services.model_dump(), passed=set(self.relay.services.get(pool.id, ())),
                backends={b: (a.services if a is not None else None) for b, a in found.items()})
        return out

    # -- one process ----------------------------------------------------------------------
    def serve_here(self, sockets: dict[str, socket.socket], http: str | None) -> None:
        if self.heartbeats is not None:
            self.heartbeats.start()
        if self.verifier is not None:
            self.verifier.start()
        web = self.start_web()
        try:
            asyncio.run(self.serve(sockets, ready=lambda: self._say_ready(), purge=True))
        finally:
            if self.verifier is not None:
                self.verifier.stop()
            if self.heartbeats is not None:
                self.heartbeats.stop()
            if web is not None:
                web.close()
            logger.info("runproxy stopped")

    def _say_ready(self) -> None:
        self.say(f"runproxy ready: pools={','.join(self.pool_ids)}")
        self.audit.application_started(version=VERSION, ae_titles=[p.ae_title for p in self.config.pools])

    # -- several processes ------------------------------------------------------------------
    def serve_in_workers(self, sockets: dict[str, socket.socket], http: str | None, count: int) -> None:
        connections.close_all()  # no database connection may cross a fork

        def worker(index: int, ready: Callable[[], None], channel: socket.socket) -> int:
            logformat.WORKER = str(index)  # every log line of this worker says which it is
            self.per_address.row = index
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent reloads it (see serve)
            self.audit = audit.install(audit.trail_start(self.config.audit, spool_name=f"worker{index}"))
            asyncio.run(self.serve(sockets, ready=ready, purge=False, worker=index, channel=channel))
            self.audit.stop()
            return 0

        self.per_address = AddressCounts(workers=count)  # shared by the workers forked below
        pool = Workers(count=count, target=worker, stopping=self.stopping, grace_seconds=self.grace_seconds + 10,
                       on_exit=self.per_address.clear)
        # The parent keeps the listening sockets (it never accepts on them): a worker that
        # dies is started again with them.
        pool.start()
        if self.heartbeats is not None:
            self.heartbeats.start()
        if self.verifier is not None:
            self.verifier.start()
        web = self.start_web()
        try:
            if pool.wait_ready(timeout=60):
                self._say_ready()
            next_purge = time.monotonic() + 5
            while not self.stopping.wait(0.2):
                pool.reap()
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    new = self.reload_shared()
                    if new is not None:
                        _close_listeners_gone(sockets, old=self.config, new=new)
                        added = self.listen_added(sockets, new)
                        self.config = new
                        pool.reload(added)  # each worker re-reads the file and applies it
                if time.monotonic() >= next_purge:
                    self.purge()
                    next_purge = time.monotonic() + BINDING_PURGE_SECONDS
        finally:
            pool.stop()
            if self.verifier is not None:
                self.verifier.stop()
            if self.heartbeats is not None:
                self.heartbeats.stop()
            if web is not None:
                web.close()
            logger.info("runproxy stopped (%d workers)", count)

    def listen_added(self, sockets: dict[str, socket.socket], new: Config) -> dict[str, socket.socket]:
        """Bind the pools a reload added (or moved) and ask their backends what they accept,
        for the workers running now (handed the sockets) and any started later."""
        fresh = [p for p in new.pools if p.id not in sockets]
        if fresh:
            self.probe_router.refresh(pool_ids=[p.id for p in new.pools])
        added: dict[str, socket.socket] = {}
        for pool in fresh:
            try:
                sockets[pool.id] = added[pool.id] = bind_listener(pool)
            except StartupError as exc:
                logger.error("reload: %s; the rest of the file is applied", exc)
                continue
            self.abilities[pool.id] = self.probe_pool(pool, self.probe_router)
        return added

    # -- the event loop of a worker ---------------------------------------------------------
    async def serve(self, sockets: dict[str, socket.socket], *, ready: Callable[[], None], purge: bool,
                    worker: int | None = None, channel: socket.socket | None = None) -> None:
        listener = logqueue.start()  # log lines leave the loop through a queue
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_loop, sig, stop)
        # SIGHUP: re-read the config file and apply it without dropping an association. In
        # one process this loop does it all; a worker applies what its parent already synced.
        reloads: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = asyncio.ensure_future(self.reload(executor, shared=worker is None, worker=worker is not None))
            reloads.add(task)
            task.add_done_callback(reloads.discard)
        if channel is None:
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        else:  # a worker ignores SIGHUP: its parent says when, with the sockets of the pools added
            loop.add_reader(channel.fileno(), self._from_parent, channel, on_hup)
        self.reload_requested.clear()
        if self.stopping.is_set():
            stop.set()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="housekeeping")
        window = self.config.study_cache_window_hours
        self.bindings = Bindings(window_hours=window,
                                 journal=BindingJournal(journal_path(settings.VAR_DIR, settings.DATABASES["default"]),
                                                        window_hours=window))
        self.router = Router(bindings=self.bindings, heartbeat_timeout=self.config.heartbeat_timeout_seconds)
        self.telemetry = Telemetry()
        self.telemetry.audit = self.audit
        await loop.run_in_executor(executor, self.refresh)
        # A pool added by a reload has no socket in a worker started since (see reload).
        pools = [self.pool_listener(p) for p in self.config.pools if p.id in sockets]
        self.relay = Relay(pools=pools, network=self.network, placement=self.router, telemetry=self.telemetry,
                           log_patient_id=settings.SYNTHIQ_LOG_PATIENT_ID, per_address=self.per_address,
                           syntax_ranks={pool_id: a.ranks for pool_id, a in self.abilities.items()},
                           commitments=DatabaseCommitmentStore())
        await self.relay.start(sockets)
        self.dicomweb = DicomWebServer(pools=[web_pool(p) for p in self.config.pools if p.id in self.web_sockets],
                                       relay=self.relay, network=self.network, check=credentials_check)
        await self.dicomweb.start(self.web_sockets)
        ready()
        chores = [self._every(REFRESH_SECONDS, executor, self.refresh),
                  self._every(PUBLISH_SECONDS, executor, self.publish)]
        if purge:
            chores.append(self._every(BINDING_PURGE_SECONDS, executor, self.purge, first=5.0))
        chores.append(self._count_tasks())
        tasks = [asyncio.ensure_future(chore) for chore in chores]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await self.dicomweb.stop()
            await self.relay.stop(grace_seconds=self.grace_seconds)
            self.router.stop()
            await loop.run_in_executor(executor, self.bindings.flush)
            await loop.run_in_executor(executor, lambda: self.publish(stopped=True))
            executor.shutdown(wait=True)
            connections.close_all()
            listener.stop()

    def pool_listener(self, pool: PoolConfig) -> PoolListener:
        return PoolListener(pool.id, pool.ae_title, pool.host, pool.port, pool.allowed_calling_ae_titles,
                            _server_tls(pool.tls) if pool.tls else None, services=self.services_passed(pool),
                            allowed_sources=pool.allowed_sources,
                            accepted_called_ae_titles=pool.accepted_called_ae_titles,
                            backend_ae_titles=tuple((b.ae_title, b.id) for b in pool.backends if b.enabled),
                            commitment_requesters=tuple((r.ae_title, r.host, r.port)
                                                        for r in pool.commitment_requesters))

    # -- reload (SIGHUP) ------------------------------------------------------------------
    def reload_shared(self) -> Config | None:
        """Re-read and validate the file as a whole; if valid, sync the database, update the
        heartbeats and readiness. Returns the new config, or None (nothing changed: an
        invalid file is logged and ignored). Done once per host: by the only process, or by
        the parent of the workers."""
        if self.config_path is None:
            logger.warning("SIGHUP: no config file to re-read")
            return None
        try:
            new = config_load(path=self.config_path)
        except ConfigError as exc:
            logger.error("reload: %s is invalid, nothing changed: %s", self.config_path, "; ".join(exc.errors))
            self.audit.reloaded(path=self.config_path, changes=exc.errors, ok=False)
            return None
        changes = differences(self.config, new)
        if not changes:
            logger.info("reload: %s unchanged", self.config_path)
            return None
        config_sync(config=new)
        for pool_id in dicom_web_changed(old=self.config, new=new):
            logger.warning("reload: pool %s: DICOMweb settings changed; they apply at the next restart", pool_id)
        pool_ids = [p.id for p in new.pools]
        self.heartbeat_policy = HeartbeatPolicy(new.heartbeat_interval_seconds, new.heartbeat_timeout_seconds,
                                                new.study_cache_window_hours)
        if self.heartbeats is not None:
            self.heartbeats.update(pool_ids=pool_ids, policy=self.heartbeat_policy)
        if self.verifier is not None:
            self.verifier.update(pool_ids=pool_ids, settings=new.reconciliation,
                                 heartbeat_timeout=new.heartbeat_timeout_seconds)
        readiness.register([readiness.Listener(p.id, p.ae_title, p.host, p.port, p.tls is not None)
                            for p in new.pools] + self.web_listeners)
        logger.warning("reload: %s: %s", self.config_path, "; ".join(changes))
        self.audit.reloaded(path=self.config_path, changes=changes, ok=True)
        if any(line.startswith("Audit") for line in changes):
            logger.warning("reload: the Audit block changed: the audit trail takes it at the next start of runproxy")
        return new

    async def reload(self, executor: ThreadPoolExecutor, *, shared: bool, worker: bool) -> None:
        """Apply the file to this event loop: pools added (listening at once), removed (the
        listener closes, its associations go on), changed (new connections get the new AE
        title, allow-list, TLS, services); network settings for new associations; backends
        through the router's next refresh. Associations already open are not touched."""
        loop = asyncio.get_running_loop()
        if shared:
            new = await loop.run_in_executor(executor, self.reload_shared)
        else:  # a worker: its parent validated and synced; read what it read
            try:
                new = await loop.run_in_executor(executor, lambda: config_load(path=self.config_path or ""))
            except ConfigError:
                return
        if new is None or self.relay is None:
            return
        old, self.config = self.config, new
        self.network = NetworkSettings(**new.network.model_dump())
        self.relay.network = self.network
        self.pool_ids = [p.id for p in new.pools]
        self.router.heartbeat_timeout = new.heartbeat_timeout_seconds
        await loop.run_in_executor(executor, self.refresh)
        before = {p.id: p for p in old.pools}
        for pool in new.pools:
            was = before.pop(pool.id, None)
            if was is not None and (was.host, was.port) == (pool.host, pool.port):
                if was != pool:
                    self.relay.update_pool(self.pool_listener(pool))
                continue
            if was is not None:
                self.relay.remove_pool(pool.id)
            if worker:  # the parent bound it (a port in use is logged there) and handed it over
                sock = self.handed.pop(pool.id, None)
                if sock is None:
                    continue
            else:
                try:
                    sock = bind_listener(pool)
                except StartupError as exc:
                    logger.error("reload: %s; the rest of the file is applied", exc)
                    continue
            self.abilities[pool.id] = await loop.run_in_executor(executor, self.probe_pool, pool, self.router)
            self.relay.add_pool(self.pool_listener(pool), sock, self.abilities[pool.id].ranks)
        for gone in before:
            self.relay.remove_pool(gone)
        for unused in self.handed.values():
            unused.close()
        self.handed.clear()
        logger.info("reload: applied to this process's listeners (pools: %s)", ", ".join(self.pool_ids))

    def _from_parent(self, channel: socket.socket, reload: Callable[[], None]) -> None:
        """A worker's channel from its parent: a reload, with the sockets of the pools it added."""
        try:
            message, fds, _, _ = socket.recv_fds(channel, 65536, 256)
        except OSError as exc:
            logger.warning("the channel from the parent failed: %s", exc)
            message, fds = b"", []
        if not message:  # the parent is gone (the worker stops too: see workers._exit_with_parent)
            asyncio.get_running_loop().remove_reader(channel.fileno())
            return
        for pool_id, fd in zip(json.loads(message), fds, strict=True):
            self.handed[pool_id] = socket.socket(fileno=fd)
        reload()

    def _stop_loop(self, sig: int, stop: asyncio.Event) -> None:
        logger.info("signal %s: stopping", signal.Signals(sig).name)
        self.stopping.set()
        stop.set()

    async def _count_tasks(self) -> None:
        """How many asyncio tasks this worker runs (published: a leak shows as growth)."""
        while True:
            self.tasks_now = len(asyncio.all_tasks())
            await asyncio.sleep(PUBLISH_SECONDS)

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
            self.refresh_failing.failed(exc)
        else:
            self.refresh_failing.ok()
        self.bindings.flush()
        if self.relay is not None:
            self.reprobe()

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
                         "will read unhealthy", STALE_INTERVALS * self.heartbeat_policy.interval_seconds, ages,
                         "is the inline heartbeat thread stuck?" if self.heartbeats
                         else "is Celery beat (and a worker) running?")
        return timing | {"heartbeat_stale": bool(stale), "heartbeat_stale_pools": sorted(stale)}

    def publish(self, *, stopped: bool = False) -> None:
        self.telemetry.publish(
            extra={
                "cache_size": len(self.bindings.cache),
                "db_ok": self.bindings.db_ok,
                "db_error": self.bindings.db_error,
                "pending_bindings": self.bindings.pending_writes(),
                "pending_connections": self.relay.pending_connections,
                "held_associations": sum(self.relay.held.values()),
                "tasks": self.tasks_now,
                "services": self.services_published(),
                "audit": self.audit.stats(),
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
            commitments_purge(now=now)
        except Exception as exc:
            self.purge_failing.failed(exc)
        else:
            self.purge_failing.ok()

    # -- web app --------------------------------------------------------------------------
    def bind_web(self, http: str):
        """The admin web app's socket, bound at start: a taken port is one clear error."""
        from waitress.server import create_server

        from synthiq_project.wsgi import application

        host, port = parse_http(http)
        try:
            return create_server(application, host=host, port=port, threads=4)
        except OSError as exc:
            raise StartupError(f"--http: cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def start_web(self):
        if self.web is not None:
            threading.Thread(target=self.web.run, name="http", daemon=True).start()
            logger.info("admin web app on http://%s:%s/", self.web.effective_host, self.web.effective_port)
        return self.web
