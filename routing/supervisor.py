"""runproxy's supervising process: start-up, the host's shared duties, the workers, shutdown.

Modelled on a long-running worker: SIGTERM/SIGINT set a flag, work is split into small
methods, and shutdown waits (bounded) for operations in flight before releasing the
backend associations and flushing writes.

Start-up, in order: validate the config and sync it to the database; bind every pool's
listening socket (once, here: a port another process holds is a clear error, never
silently shared); one heartbeat round (a cold start would otherwise pile onto the first
backend); probe the backends' transfer syntaxes. Then either serve on one event loop in
this process (``--workers 1``) or fork N workers that inherit the sockets, each with its own
loop, hot cache and counters (``routing.worker``; published to the database, summed by
/api/status). The supervisor owns the config, the sockets, the heartbeats and the ledger's
verification, the purge (with workers), the admin web app and the worker processes.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from django.conf import settings
from django.db import OperationalError, connections

from affinity.bindings import Bindings
from affinity.services import BINDING_PURGE_SECONDS
from health.runner import InlineHeartbeats
from health.services import HeartbeatPolicy
from health.watch import StalenessWatch
from pools.config import Config, ConfigError, config_load, differences
from pools.services import config_sync
from routing import audit, eventloop, readiness
from routing.listeners import StartupError, bind_listener, close_listeners_gone, dicom_web_changed, web_moved
from routing.probing import Prober
from routing.relay.quota import AddressCounts
from routing.router import Router
from routing.verifier import InlineVerifier
from routing.worker import Worker, WorkerSetup, purge_expired, reread
from routing.workers import Workers
from synthiq_project import logformat
from synthiq_project.dburl import mask_password
from synthiq_project.repeating import Repeating
from synthiq_project.version import VERSION

logger = logging.getLogger("synthiq.routing")


def parse_http(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise StartupError(f"--http: expected HOST:PORT, got {value!r}")
    return host, int(port)


def bind_web(http: str) -> Any:
    """The admin web app's server (waitress), bound at start: a taken port is one clear error."""
    from waitress.server import create_server

    from synthiq_project.wsgi import application

    host, port = parse_http(http)
    try:
        return create_server(application, host=host, port=port, threads=4)
    except OSError as exc:
        raise StartupError(f"--http: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


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


class Supervisor:
    def __init__(self, *, config: Config, grace_seconds: float, say: Callable[[str], None],
                 config_path: str | None = None, event_loop: str = eventloop.DEFAULT):
        self.config = config
        self.event_loop = event_loop  # uvloop or asyncio (routing.eventloop)
        self.config_path = config_path  # re-read on SIGHUP
        self.say = say
        self.grace_seconds = grace_seconds
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.purge_failing = Repeating(logger, "purge failed")
        self.sockets: dict[str, socket.socket] = {}
        self.web_sockets: dict[str, socket.socket] = {}  # the DICOMweb listeners
        self.web: Any = None  # the admin web app's server
        self.policy = HeartbeatPolicy(config.heartbeat_interval_seconds, config.heartbeat_timeout_seconds,
                                      config.study_cache_window_hours)
        self.heartbeats: InlineHeartbeats | None = None
        self.verifier: InlineVerifier | None = None
        self.staleness = StalenessWatch(self.policy, inline=settings.SYNTHIQ_INLINE_HEARTBEATS)
        self.prober = Prober()
        self.probe_router: Router | None = None  # the backends' addresses and health, for probing
        self.audit: Any = audit.NULL_TRAIL  # this process's audit trail, started by run()

    def run(self, *, workers: int, http: str | None) -> None:
        """Start up (see the module docstring) and serve until SIGTERM/SIGINT."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reload_requested.set())
        logger.info("SynthIQ %s starting", VERSION)
        raise_open_files_limit()
        self.web = bind_web(http) if http else None
        wait_for_database(max_seconds=settings.SYNTHIQ_DB_WAIT_SECONDS)
        config_sync(config=self.config)
        self._bind()
        if settings.SYNTHIQ_INLINE_HEARTBEATS:
            # One full round before accepting: a cold start would otherwise find no
            # healthy backend and pile every new study onto the first one (fallback).
            self.heartbeats = InlineHeartbeats(pool_ids=self.pool_ids, policy=self.policy)
            self.heartbeats.run_once()
            # The study ledger's verification: beside the heartbeats (this process or Celery beat).
            self.verifier = InlineVerifier(pool_ids=self.pool_ids, settings=self.config.reconciliation,
                                           heartbeat_timeout=self.config.heartbeat_timeout_seconds)
        else:
            logger.info("heartbeats come from Celery beat (CELERY_BROKER_URL is set)")
        self._probe_all()
        self.audit = audit.install(audit.trail_start(self.config.audit, spool_name="main"))
        try:
            if workers == 1:
                self.serve_here()
            else:
                self.serve_in_workers(workers)
        finally:
            self.audit.application_stopped(version=VERSION)
            self.audit.stop()

    @property
    def pool_ids(self) -> list[str]:
        return [p.id for p in self.config.pools]

    def _on_signal(self, signum: int, frame: object) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def _bind(self) -> None:
        self.sockets = {p.id: bind_listener(p) for p in self.config.pools}
        self.web_sockets = {p.id: bind_listener(p, dicom_web=True) for p in self.config.pools if p.dicom_web}
        self._register_readiness()

    def _register_readiness(self) -> None:
        pools = self.config.pools
        readiness.register([readiness.Listener(p.id, p.ae_title, p.host, p.port, p.tls is not None) for p in pools] + [
            readiness.Listener(p.id, p.ae_title, p.dicom_web_host, p.dicom_web.port, p.dicom_web.tls is not None,
                               "DICOMweb", p.dicom_web.base_path) for p in pools if p.dicom_web is not None])

    def _probe_all(self) -> None:
        """Ask every pool's backends what they accept, before any worker starts."""
        self.probe_router = Router(bindings=Bindings(window_hours=self.config.study_cache_window_hours),
                                   heartbeat_timeout=self.config.heartbeat_timeout_seconds)
        self.probe_router.refresh(pool_ids=self.pool_ids)
        for pool in self.config.pools:
            self.prober.probe_pool(pool, self.probe_router)

    def _worker_setup(self, per_address: AddressCounts, *, purge: bool,
                      read_config: Callable[[], Config | None], channel: socket.socket | None = None) -> WorkerSetup:
        return WorkerSetup(config=self.config, sockets=self.sockets, web_sockets=self.web_sockets,
                           prober=self.prober, per_address=per_address, audit=self.audit, staleness=self.staleness,
                           grace_seconds=self.grace_seconds, stopping=self.stopping, read_config=read_config,
                           purge=purge, channel=channel)

    def _say_ready(self) -> None:
        self.say(f"runproxy ready: pools={','.join(self.pool_ids)}")
        self.audit.application_started(version=VERSION, ae_titles=[p.ae_title for p in self.config.pools])

    @contextmanager
    def _host_duties(self) -> Iterator[None]:
        """The threads this process runs beside its event loop or workers: the heartbeats,
        the ledger's verification and the admin web app."""
        for duty in (self.heartbeats, self.verifier):
            if duty is not None:
                duty.start()
        if self.web is not None:
            threading.Thread(target=self.web.run, name="http", daemon=True).start()
            logger.info("admin web app on http://%s:%s/", self.web.effective_host, self.web.effective_port)
        try:
            yield
        finally:
            for duty in (self.verifier, self.heartbeats):
                if duty is not None:
                    duty.stop()
            if self.web is not None:
                self.web.close()

    # -- one process ----------------------------------------------------------------------
    def serve_here(self) -> None:
        setup = self._worker_setup(AddressCounts(), purge=True, read_config=self.reload_shared)
        with self._host_duties():
            try:
                eventloop.run(Worker(setup).serve(ready=self._say_ready), loop=self.event_loop)
            finally:
                logger.info("runproxy stopped")

    # -- several processes ------------------------------------------------------------------
    def serve_in_workers(self, count: int) -> None:
        connections.close_all()  # no database connection may cross a fork
        per_address = AddressCounts(workers=count)  # shared by the workers forked below
        read_config = partial(reread, self.config_path or "")

        def worker(index: int, ready: Callable[[], None], channel: socket.socket) -> int:
            logformat.WORKER = str(index)  # every log line of this worker says which it is
            per_address.row = index
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent reloads it (see _supervise)
            self.audit = audit.install(audit.trail_start(self.config.audit, spool_name=f"worker{index}"))
            setup = self._worker_setup(per_address, purge=False, read_config=read_config, channel=channel)
            eventloop.run(Worker(setup).serve(ready=ready), loop=self.event_loop)
            self.audit.stop()
            return 0

        # The parent keeps the listening sockets (it never accepts on them): a worker that
        # dies is started again with them.
        workers = Workers(count=count, target=worker, stopping=self.stopping, grace_seconds=self.grace_seconds + 10,
                          on_exit=per_address.clear)
        workers.start()
        with self._host_duties():
            try:
                self._supervise(workers)
            finally:
                workers.stop()
                logger.info("runproxy stopped (%d workers)", count)

    def _supervise(self, workers: Workers) -> None:
        if workers.wait_ready(timeout=60):
            self._say_ready()
        next_purge = time.monotonic() + 5
        while not self.stopping.wait(0.2):
            workers.reap()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                old = self.config
                new = self.reload_shared()
                if new is not None:
                    close_listeners_gone(self.sockets, old=old, new=new)
                    # each worker re-reads the file and applies it
                    workers.reload(self.listen_added(new), self.web_listen_moved(old, new))
            if time.monotonic() >= next_purge:
                purge_expired(window_hours=self.config.study_cache_window_hours, failing=self.purge_failing)
                next_purge = time.monotonic() + BINDING_PURGE_SECONDS

    def listen_added(self, new: Config) -> dict[str, socket.socket]:
        """Bind the pools a reload added (or moved) and ask their backends what they accept,
        for the workers running now (handed the sockets) and any started later."""
        fresh = [p for p in new.pools if p.id not in self.sockets]
        if fresh and self.probe_router is not None:
            self.probe_router.refresh(pool_ids=[p.id for p in new.pools])
        added: dict[str, socket.socket] = {}
        for pool in fresh:
            try:
                self.sockets[pool.id] = added[pool.id] = bind_listener(pool)
            except StartupError as exc:
                logger.error("reload: %s; the rest of the file is applied", exc)
                continue
            if self.probe_router is not None:
                self.prober.probe_pool(pool, self.probe_router)
        return added

    def web_listen_moved(self, old: Config, new: Config) -> dict[str, socket.socket]:
        """The DICOMweb listeners a reload added or moved, bound here for the workers (handed
        the sockets); this process's copy of those it moved or removed closed, so their
        ports are freed once the workers retire their sites. A changed listener at the same
        address keeps its socket (each worker duplicates it)."""
        now = {p.id: p for p in new.pools}
        added: dict[str, socket.socket] = {}
        for pool_id in web_moved(old=old, new=new):
            gone = self.web_sockets.pop(pool_id, None)
            if gone is not None:
                gone.close()
            pool = now.get(pool_id)
            if pool is None or pool.dicom_web is None:
                continue
            try:
                self.web_sockets[pool_id] = added[pool_id] = bind_listener(pool, dicom_web=True)
            except StartupError as exc:
                logger.error("reload: %s; the rest of the file is applied", exc)
        return added

    # -- reload (SIGHUP) ------------------------------------------------------------------
    def reload_shared(self) -> Config | None:
        """Re-read and validate the file as a whole; if valid, sync the database, update the
        heartbeats, verification and readiness, and keep it as this host's config. Returns
        the new config, or None (nothing changed: an invalid file is logged and ignored).
        Done once per host: by the only process (on its housekeeping thread), or by the
        parent of the workers. The event loops apply it themselves (``Worker.reload``)."""
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
            logger.info("reload: pool %s: DICOMweb settings changed; its listener is served anew", pool_id)
        self.config = new
        self.policy = HeartbeatPolicy(new.heartbeat_interval_seconds, new.heartbeat_timeout_seconds,
                                      new.study_cache_window_hours)
        if self.heartbeats is not None:
            self.heartbeats.update(pool_ids=self.pool_ids, policy=self.policy)
        if self.verifier is not None:
            self.verifier.update(pool_ids=self.pool_ids, settings=new.reconciliation,
                                 heartbeat_timeout=new.heartbeat_timeout_seconds)
        self._register_readiness()
        logger.warning("reload: %s: %s", self.config_path, "; ".join(changes))
        self.audit.reloaded(path=self.config_path, changes=changes, ok=True)
        if any(line.startswith("Audit") for line in changes):
            logger.warning("reload: the Audit block changed: the audit trail takes it at the next start of runproxy")
        return new
