"""runproxy: every pool's DICOM listener, plus optionally the admin web app (see routing.supervisor)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pools.config import ConfigError, config_load
from routing import eventloop
from routing.listeners import StartupError
from routing.supervisor import Supervisor
from synthiq_project.version import VERSION


class Command(BaseCommand):
    help = "Run SynthIQ's DICOM listeners (and optionally the admin web app)."

    def get_version(self) -> str:
        """What ``runproxy --version`` prints (Django's own version otherwise)."""
        return f"SynthIQ {VERSION}"

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
        parser.add_argument("--event-loop", choices=eventloop.LOOPS, default=eventloop.DEFAULT,
                            help=f"the event loop the workers run on (default {eventloop.DEFAULT})")

    def handle(self, *args, config, http, no_http, grace_seconds, workers, event_loop, **options):
        if not config:
            raise CommandError("--config: no config file given (or set SYNTHIQ_CONFIG)")
        if workers < 1:
            raise CommandError("--workers: must be at least 1")
        try:
            parsed = config_load(path=config)
        except ConfigError as exc:
            raise CommandError("invalid config, nothing changed:\n  " + "\n  ".join(exc.errors)) from None
        try:
            Supervisor(config=parsed, config_path=config, grace_seconds=grace_seconds, event_loop=event_loop,
                       say=self._say).run(workers=workers, http=http)
        except StartupError as exc:
            raise CommandError(str(exc)) from None

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
