"""Move the affinity store to another database (e.g. SQLite -> PostgreSQL).

Copies pools, backends (bindings point at them) and every binding, in batches, into the
target database after migrating it. Existing rows in the target win (insert-if-absent),
so the command can be re-run after an interruption without duplicating anything.
"""

from __future__ import annotations

import environ
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from affinity.models import Binding
from pools.models import Backend, Pool

TARGET = "movebindings_target"
BATCH = 5000


class Command(BaseCommand):
    help = "Copy pools, backends and all affinity bindings into another database (DATABASE_URL form)."

    def add_arguments(self, parser):
        parser.add_argument("--to", required=True, metavar="DATABASE_URL", help="target database URL")

    def handle(self, *args, to, **options):
        try:
            target = environ.Env.db_url_config(to)
        except Exception as exc:
            raise CommandError(f"--to: not a database URL ({exc})") from exc
        source = connections.settings[DEFAULT_DB_ALIAS]
        if (target["ENGINE"], target.get("NAME"), target.get("HOST")) == (
            source["ENGINE"], source.get("NAME"), source.get("HOST")
        ):
            raise CommandError("--to: the target is the current database")
        options = {"OPTIONS": target.get("OPTIONS", {})}  # not the source's engine-specific ones
        connections.settings[TARGET] = connections.settings[DEFAULT_DB_ALIAS] | target | options
        connections.settings[TARGET].pop("TEST", None)
        try:
            call_command("migrate", database=TARGET, verbosity=0)
            with transaction.atomic(using=TARGET):
                Pool.objects.using(TARGET).bulk_create(list(Pool.objects.all()), ignore_conflicts=True)
                Backend.objects.using(TARGET).bulk_create(list(Backend.objects.all()), ignore_conflicts=True)
            moved = 0
            last_pk = 0
            while True:
                batch = list(Binding.objects.filter(pk__gt=last_pk).order_by("pk")[:BATCH])
                if not batch:
                    break
                last_pk = batch[-1].pk
                for b in batch:
                    b.pk = None  # the target numbers its own rows; (pool, study) is the identity
                with transaction.atomic(using=TARGET):
                    Binding.objects.using(TARGET).bulk_create(batch, ignore_conflicts=True)
                moved += len(batch)
                self.stdout.write(f"  {moved} bindings copied")
            total = Binding.objects.using(TARGET).count()
        finally:
            connections[TARGET].close()
        self.stdout.write(f"done: {moved} bindings read, target now holds {total}")
