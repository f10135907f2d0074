from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from pools.config import ConfigError, config_load
from pools.services import config_sync


class Command(BaseCommand):
    help = "Validate a SynthIQ JSON config file as a whole and sync it to the database."

    def add_arguments(self, parser):
        parser.add_argument("config", help="path to the JSON config file")
        parser.add_argument("--check", action="store_true", help="validate only")

    def handle(self, *args, config, check, **options):
        try:
            cfg = config_load(path=config)
        except ConfigError as exc:
            raise CommandError("invalid config, nothing changed:\n  " + "\n  ".join(exc.errors)) from None
        if check:
            self.stdout.write("config OK")
            return
        changes = config_sync(config=cfg)
        self.stdout.write(
            f"synced pools={','.join(changes['pools'])} backends={','.join(changes['backends'])}"
            + (f" disabled={','.join(changes['disabled'])}" if changes["disabled"] else "")
        )
