"""``manage.py verify --pool POOL STUDY_UID… | --all``: verify studies now, whether quiet or
not, and print each verdict (see affinity.verification)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from affinity import selectors
from affinity.verification import binding_verify, pool_asking
from pools.config import ConfigError
from routing.dicom.uids import shown, uid_problem


class Command(BaseCommand):
    help = "Ask the backends what they hold of these studies (or every study of the pool) and record the verdicts."

    def add_arguments(self, parser):
        parser.add_argument("--pool", required=True)
        parser.add_argument("study_uids", nargs="*", metavar="STUDY_UID")
        parser.add_argument("--all", action="store_true", help="every study bound in the pool")

    def handle(self, *args, pool, study_uids, all, **options):
        if bool(study_uids) == bool(all):
            raise CommandError("name the studies, or --all")
        try:
            settings, peers, ask = pool_asking(pool_id=pool)
        except (ConfigError, LookupError) as exc:
            raise CommandError(str(exc)) from None
        wanted = None
        if not all:
            for uid in study_uids:
                if uid_problem(uid):
                    self.stderr.write(f"{shown(uid)}: not a UID ({uid_problem(uid)}): skipped")
            wanted = [uid for uid in study_uids if not uid_problem(uid)]
        bindings = selectors.bindings_of_pool(pool_id=pool, study_uids=wanted)
        if wanted is not None:
            for uid in sorted(set(wanted) - set(bindings.values_list("study_uid", flat=True))):
                self.stderr.write(f"{uid}: not bound in pool {pool}: skipped")
        counts: dict[str, int] = {}
        for binding in bindings.iterator():
            found = binding_verify(binding=binding, peers=peers, ask=ask, settings=settings, leased=True)
            if found is None:
                counts["postponed"] = counts.get("postponed", 0) + 1
                self.stdout.write(f"{binding.study_uid}: not verified now (its backend {binding.backend_id} could "
                                  "not be asked: see the log)")
                continue
            counts[found.verdict] = counts.get(found.verdict, 0) + 1
            line = (f"{binding.study_uid}: {found.verdict} (bound to {binding.backend_id}; acknowledged "
                    f"{found.acknowledged}; held {found.held or '{}'})")
            if found.lost:
                line += f"; on no backend: {len(found.lost)}"
            if found.lacking:
                line += "; the bound backend lacks: " + ", ".join(
                    f"{len(sops)} on {backend_id}" for backend_id, sops in sorted(found.lacking.items()))
            if found.silent:
                line += f"; not asked: {', '.join(found.silent)}"
            self.stdout.write(line)
        self.stdout.write("verified: " + (", ".join(f"{v} {n}" for v, n in sorted(counts.items())) or "nothing"))
