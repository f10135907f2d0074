"""``manage.py consolidate --pool POOL STUDY_UID… | --all-split [--dry-run]``: copy to each
study's bound backend exactly the instances it lacks (IMAGE-level C-MOVE from the backends
holding them), then verify again. Never deletes anything (see affinity.consolidation)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from affinity import selectors
from affinity.consolidation import binding_consolidate
from affinity.models import Verdict
from affinity.verification import pool_asking
from pools.config import ConfigError
from routing.dicom.uids import shown, uid_problem


class Command(BaseCommand):
    help = ("Gather split studies onto their bound backend by C-MOVE (calling as the pool's AE title, to the bound "
            "backend's AE title), then verify them. Nothing is deleted anywhere.")

    def add_arguments(self, parser):
        parser.add_argument("--pool", required=True)
        parser.add_argument("study_uids", nargs="*", metavar="STUDY_UID")
        parser.add_argument("--all-split", action="store_true", help="every study of the pool whose verdict is split")
        parser.add_argument("--dry-run", action="store_true", help="say what would be moved, move nothing")

    def handle(self, *args, pool, study_uids, all_split, dry_run, **options):
        if bool(study_uids) == bool(all_split):
            raise CommandError("name the studies, or --all-split")
        try:
            settings, peers, ask = pool_asking(pool_id=pool)
        except (ConfigError, LookupError) as exc:
            raise CommandError(str(exc)) from None
        if all_split:
            bindings = selectors.bindings_of_pool(pool_id=pool, verdict=Verdict.SPLIT)
        else:
            for uid in study_uids:
                if uid_problem(uid):
                    self.stderr.write(f"{shown(uid)}: not a UID ({uid_problem(uid)}): skipped")
            wanted = [uid for uid in study_uids if not uid_problem(uid)]
            bindings = selectors.bindings_of_pool(pool_id=pool, study_uids=wanted)
            for uid in sorted(set(wanted) - set(bindings.values_list("study_uid", flat=True))):
                self.stderr.write(f"{uid}: not bound in pool {pool}: skipped")
        for binding in list(bindings):
            binding_consolidate(binding=binding, peers=peers, ask=ask, settings=settings, dry_run=dry_run,
                                say=self.stdout.write)
