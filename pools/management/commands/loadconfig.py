from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from pools.config import ConfigError, config_load, differences
from pools.selectors import pools_as_stored
from pools.services import config_sync


class Command(BaseCommand):
    help = "Validate a SynthIQ JSON config file as a whole and sync it to the database."

    def add_arguments(self, parser):
        parser.add_argument("config", help="path to the JSON config file")
        parser.add_argument("--check", action="store_true",
                            help="validate only, and print what would change against the database")

    def handle(self, *args, config, check, **options):
        try:
            cfg = config_load(path=config)
        except ConfigError as exc:
            raise CommandError("invalid config, nothing changed:\n  " + "\n  ".join(exc.errors)) from None
        if check:
            self.stdout.write("config OK")
            self._what_would_change(cfg)
            return
        changes = config_sync(config=cfg)
        self.stdout.write(
            f"synced pools={','.join(changes['pools'])} backends={','.join(changes['backends'])}"
            + (f" disabled={','.join(changes['disabled'])}" if changes["disabled"] else "")
        )

    def _what_would_change(self, cfg) -> None:
        """Sync inside a transaction that is rolled back: the difference is exactly what a
        real sync (loadconfig, runproxy at start or on SIGHUP) would do to the database."""
        with transaction.atomic():
            before = pools_as_stored()
            config_sync(config=cfg)
            after = pools_as_stored()
            transaction.set_rollback(True)
        changes = differences(before, after)
        self.stdout.write("\n".join(f"  would change {line}" for line in changes) if changes
                          else "  no change against the database")
