"""``manage.py adopt --pool POOL [--since YYYYMMDD] [--until YYYYMMDD] [--csv FILE] [--dry-run]``:
learn where the studies already in a pool live (see affinity.adoption)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from affinity.adoption import Adopter
from pools.config import ConfigError
from pools.selectors import reconciliation_settings


def _date(value: str) -> dt.date:
    try:
        if len(value) != 8 or not value.isdigit():
            raise ValueError
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise CommandError(f"expected a date as YYYYMMDD, got {value!r}") from None


class Command(BaseCommand):
    help = ("Bind the studies already on a pool's backends to the backend holding them (study-level C-FIND by "
            "StudyDate windows, or a CSV export of StudyInstanceUID,backend rows). Resumable; --dry-run writes "
            "nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--pool", required=True)
        parser.add_argument("--since", metavar="YYYYMMDD", help="first StudyDate to ask for (default: 19000101)")
        parser.add_argument("--until", metavar="YYYYMMDD", help="last StudyDate to ask for (default: today, UTC)")
        parser.add_argument("--csv", metavar="FILE", help="adopt from StudyInstanceUID,backend rows instead")
        parser.add_argument("--dry-run", action="store_true", help="ask, and report what would be bound")
        parser.add_argument("--find-limit", type=int, default=0, metavar="N",
                            help="a backend's known C-FIND result cap, for a PACS that ends a capped search with "
                                 "Success instead of 0xFE00: an answer of N studies is taken as capped and its "
                                 "window halved (default 0: no such cap)")

    def handle(self, *args, pool, since, until, csv, dry_run, find_limit, **options):
        since_day, until_day = (_date(v) if v else None for v in (since, until))
        if find_limit < 0:
            raise CommandError(f"--find-limit {find_limit}: expected 0 (no known cap) or more")
        if since_day and since_day > (until_day or dt.datetime.now(dt.UTC).date()):
            raise CommandError(f"--since is after {'--until' if until_day else 'today'}")
        if csv and (since or until):
            raise CommandError("--csv adopts what the file lists: --since and --until do not apply")
        try:
            settings = reconciliation_settings()
            adopter = Adopter(pool_id=pool, settings=settings, dry_run=dry_run, say=self.stdout.write,
                              progress=self.stderr.isatty(), find_limit=find_limit)
        except (ConfigError, LookupError) as exc:
            raise CommandError(str(exc)) from None
        if csv:
            path = Path(csv)
            if not path.is_file():
                raise CommandError(f"--csv: no file {csv}")
            report = adopter.run_csv(path)
        else:
            try:
                report = adopter.run_dates(since=since_day, until=until_day)
            except LookupError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(f"adopt pool {pool}{' (dry run: nothing written)' if dry_run else ''}:")
        for line in report.lines(dry_run=dry_run):
            self.stdout.write(f"  {line}")
