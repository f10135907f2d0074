"""runproxy: every pool's DICOM listener, plus optionally the admin web app, in one process.

Modelled on a long-running worker: SIGTERM/SIGINT set a flag, the loop checks it,
periodic work is split into small methods, and shutdown waits (bounded) for
in-flight C-STOREs before releasing outbound associations and flushing writes.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from affinity.services import bindings_purge_expired
from affinity.store import AffinityStore
from health.runner import InlineHeartbeats
from health.selectors import heartbeat_staleness
from health.services import HeartbeatPolicy
from pools.config import Config, ConfigError, config_load
from pools.services import config_sync
from routing.proxy import NetworkConfig, PoolListenerConfig, Proxy
from routing.router import Router
from routing.services import routing_activity_purge
from routing.spool import spool_prepare, spool_sweep
from routing.stats import Stats

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


class Command(BaseCommand):
    help = "Run SynthIQ's DICOM listeners (and optionally the admin web app)."

    def add_arguments(self, parser):
        parser.add_argument("--config", default=settings.SYNTHIQ_CONFIG or None,
                            help="JSON config file (default: $SYNTHIQ_CONFIG)")
        web = parser.add_mutually_exclusive_group()
        web.add_argument("--http", metavar="HOST:PORT", help="also serve the admin web app here")
        web.add_argument("--no-http", action="store_true", help="no web app (the default)")
        parser.add_argument("--grace-seconds", type=float, default=10.0,
                            help="how long in-flight C-STOREs may take to finish on shutdown")

    def _on_signal(self, signum, frame) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def handle(self, *args, config, http, no_http, grace_seconds, **options):
        if not config:
            raise CommandError("--config: no config file given (or set SYNTHIQ_CONFIG)")
        try:
            self.config: Config = config_load(path=config)
        except ConfigError as exc:
            raise CommandError("invalid config, nothing changed:\n  " + "\n  ".join(exc.errors)) from None
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

        config_sync(config=self.config)
        self.spool = spool_prepare(base=settings.VAR_DIR / "spool")
        self.pool_ids = [p["Id"] for p in self.config.pools]
        self.store = AffinityStore(window_hours=self.config.study_cache_window_hours)
        self.router = Router(store=self.store, heartbeat_timeout=self.config.heartbeat_timeout)
        self.stats = Stats()
        self.heartbeat_policy = HeartbeatPolicy(self.config.heartbeat_interval, self.config.heartbeat_timeout,
                                                    self.config.study_cache_window_hours)
        self.heartbeats: InlineHeartbeats | None = None
        self.heartbeats_since = dt.datetime.now(dt.UTC)
        self.stale_logged_at: float | None = None
        self.proxy = Proxy(
            pools=[
                PoolListenerConfig(p["Id"], p["AeTitle"], p["Host"], p["Port"],
                                   p["AllowedCallingAeTitles"], p.get("Tls"))
                for p in self.config.pools
            ],
            network=NetworkConfig.from_config(self.config.network),
            router=self.router,
            stats=self.stats,
        )
        if settings.SYNTHIQ_INLINE_HEARTBEATS:
            # One full round before accepting: a cold start would otherwise find no
            # healthy backend and pile every new study onto the first one (fallback).
            self.heartbeats = InlineHeartbeats(pool_ids=self.pool_ids, policy=self.heartbeat_policy)
            self.heartbeats.run_once()
            self.heartbeats.start()
        else:
            logger.info("heartbeats come from Celery beat (CELERY_BROKER_URL is set)")
        self.router.refresh(pool_ids=self.pool_ids)
        web = self.start_web(http) if http else None
        self.proxy.start()
        self.stdout.write(f"runproxy ready: pools={','.join(self.pool_ids)}", ending="\n")
        self.stdout.flush()
        try:
            self.loop()
        finally:
            self.shutdown(grace_seconds, web)

    # -- the loop ---------------------------------------------------------------
    def loop(self) -> None:
        next_refresh = next_publish = time.monotonic()
        next_purge = time.monotonic() + 5
        # Abandoned spool files are those idle longer than the network timeout.
        sweep_every = max(1.0, min(60.0, self.config.network["NetworkTimeoutSeconds"] / 2))
        next_sweep = time.monotonic() + sweep_every
        while not self.stopping:
            now = time.monotonic()
            if now >= next_refresh:
                self.refresh()
                next_refresh = now + REFRESH_SECONDS
            if now >= next_publish:
                self.publish()
                next_publish = now + PUBLISH_SECONDS
            if now >= next_purge:
                self.purge()
                next_purge = now + PURGE_SECONDS
            if now >= next_sweep:
                spool_sweep(spool=self.spool, max_idle_seconds=self.config.network["NetworkTimeoutSeconds"])
                next_sweep = now + sweep_every
            time.sleep(0.05)

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
            } | self.heartbeat_status(),
            listeners=[{"pool": p.id, "ae_title": p.ae_title, "port": p.port,
                        "accepting": self.proxy.accepting} for p in self.proxy.pools],
            stopped=stopped,
        )

    def purge(self) -> None:
        now = dt.datetime.now(dt.UTC)
        try:
            bindings_purge_expired(window_hours=self.config.study_cache_window_hours, now=now)
            routing_activity_purge(now=now)
        except Exception as exc:
            logger.warning("purge failed: %s", exc)

    # -- web app --------------------------------------------------------------
    def start_web(self, http: str):
        from waitress.server import create_server

        from synthiq_project.wsgi import application

        host, port = _parse_http(http)
        server = create_server(application, host=host, port=port, threads=4)
        threading.Thread(target=server.run, name="http", daemon=True).start()
        logger.info("admin web app on http://%s:%d/", host, port)
        return server

    # -- shutdown -------------------------------------------------------------
    def shutdown(self, grace_seconds: float, web) -> None:
        if self.heartbeats is not None:
            self.heartbeats.stop()
        self.proxy.stop(grace_seconds=grace_seconds)
        self.store.flush()
        self.publish(stopped=True)
        if web is not None:
            web.close()
        logger.info("runproxy stopped")
