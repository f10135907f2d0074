"""Adoption: learn where the studies already in a pool live, so that SynthIQ routes their
late instances, re-sends and priors to the node that holds them (``manage.py adopt``).

Every enabled backend is asked a study-level C-FIND without a date first. When none capped
it (0xFE00: SynthIQ never cancels), that one answer names every study: each StudyDate
window not done takes the studies dated inside it, the undated ones theirs. When one did
cap it, the backends are asked one StudyDate window at a time; a capped window is halved
until no cap is hit, and a one-day window still capped is reported; the undated studies
come from the first answer (capped: said so). A window is done only when every enabled
backend answered it: it is then recorded, so an interrupted run, started again with the
same arguments, goes on with the windows not done.

A study held on one backend is bound there; one held on several is bound to the one
holding most instances (ties: the lowest id) and verified at once (``split`` when another
backend holds what the bound one lacks). A study already bound keeps its binding (live
traffic wins); a disagreement is reported. Bindings are claimed in batches with the same
race-free insert runproxy uses, so it may run meanwhile. With ``dry_run`` nothing is
written: what would be done is reported.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connection, transaction
from tqdm import tqdm

from affinity import scu, selectors, services
from affinity.models import Adoption, AdoptionWindow
from affinity.verification import QUERY_TIMEOUT_SECONDS, Asker, Prefetched, binding_verify, pool_peers
from pools.config import ReconciliationConfig
from routing.dicom.uids import shown, uid_problem

logger = logging.getLogger("synthiq.affinity")

EARLIEST = dt.date(1900, 1, 1)
CLAIM_BATCH = 1000
UNDATED = "undated"


@dataclass
class Report:
    windows_done: int = 0
    windows_left: int = 0
    studies: int = 0
    bound: int = 0
    kept: int = 0
    disagreements: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    several: int = 0
    undated: int = 0
    rejected: int = 0
    capped_days: list[str] = field(default_factory=list)
    undated_capped: bool = False
    unanswered: list[str] = field(default_factory=list)
    bad_rows: list[str] = field(default_factory=list)

    def lines(self, *, dry_run: bool) -> list[str]:
        would = "would be " if dry_run else ""
        out = [f"studies found: {self.studies} ({self.undated} undated)",
               f"{would}bound: {self.bound}; already bound and kept: {self.kept}; "
               f"on several backends: {self.several}" + (f" ({len(self.split)} split)" if not dry_run else ""),
               f"windows done: {self.windows_done}; not done: {self.windows_left}"]
        out += [f"disagreement: {line}" for line in self.disagreements]
        out += [f"split: {line}" for line in self.split]
        if self.rejected:
            out.append(f"answers rejected (invalid UIDs): {self.rejected}")
        out += [f"capped at one day (some studies of that day may be unknown; adopt them from a CSV): {day}"
                for day in self.capped_days]
        if self.undated_capped:
            out.append("the undated query was capped: some undated studies may be unknown (adopt them from a CSV)")
        out += [f"not answered: {line}" for line in self.unanswered]
        out += [f"skipped: {line}" for line in self.bad_rows]
        return out


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def remaining(since: dt.date, until: dt.date, done: list[tuple[dt.date, dt.date]]) -> list[tuple[dt.date, dt.date]]:
    """The parts of [since, until] that no done window covers, in date order."""
    left, start = [], since
    for first, last in sorted(done):
        if first > start:
            left.append((start, min(first - dt.timedelta(days=1), until)))
        start = max(start, last + dt.timedelta(days=1))
        if start > until:
            break
    if start <= until:
        left.append((start, until))
    return [(a, b) for a, b in left if a <= b]


class Adopter:
    def __init__(self, *, pool_id: str, settings: ReconciliationConfig, dry_run: bool,
                 say: Callable[[str], None] = print, timeout: float = QUERY_TIMEOUT_SECONDS,
                 progress: bool = True, find_limit: int = 0):
        self.pool_id = pool_id
        # A PACS that caps a search by ending it with Success after N matches (not 0xFE00):
        # an answer of N studies from one backend counts as capped (0: no such cap known).
        self.find_limit = find_limit
        self.settings = settings
        self.dry_run = dry_run
        self.say = say
        self.calling_ae, self.peers = pool_peers(pool_id=pool_id)
        self.rate = scu.RateLimit(settings.max_queries_per_second)
        self.ask = Asker(self.calling_ae, self.rate, timeout)
        self.timeout = timeout
        self.progress = progress
        self.report = Report()

    # -- by StudyDate -----------------------------------------------------------------------
    def run_dates(self, *, since: dt.date | None, until: dt.date | None) -> Report:
        adoption, since, until, done = self._begin(since, until)
        if not self.peers:
            raise LookupError(f"pool {self.pool_id} has no enabled backend")
        windows = remaining(since, until, [(w.first, w.last) for w in done if not w.undated and w.first and w.last])
        undated_done = any(w.undated for w in done)
        total_days = (until - since).days + 2
        left_days = sum((b - a).days + 1 for a, b in windows) + (0 if undated_done else 1)
        bar = tqdm(total=total_days, initial=total_days - left_days, unit="day", desc=f"adopt {self.pool_id}",
                   disable=not self.progress, leave=False)
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="adopt") as pool:
            self.executor = pool
            undated = None
            if not undated_done:
                # The query without a date first: when no backend capped it, it names every study (one
                # response per study, instead of one for its window and one for the undated query).
                undated = self._ask_all(dates="", what=UNDATED)
                if undated is not None and not any(a.capped for a in undated.values()):
                    self._from_one_answer(adoption, windows, undated)
                    bar.update(left_days)
                    return self._end(bar, adoption, finished=self.report.windows_left == 0)
            self._walk(adoption, windows, bar)
            if not undated_done:
                self._undated(adoption, undated)
                bar.update(1)
        return self._end(bar, adoption, finished=self.report.windows_left == 0)

    def _begin(self, since: dt.date | None, until: dt.date | None
               ) -> tuple[Adoption | None, dt.date, dt.date, list[AdoptionWindow]]:
        """The adoption to resume (same pool and arguments, unfinished) or a new one (none
        in a dry run): it, its dates and the windows it has done."""
        since_arg, until_arg = (_da(d) if d else "" for d in (since, until))
        now = dt.datetime.now(dt.UTC)
        adoption = None if self.dry_run else selectors.adoption_resumable(
            pool_id=self.pool_id, since_arg=since_arg, until_arg=until_arg)
        if adoption is not None:
            done = selectors.adoption_windows_done(adoption_id=adoption.id)
            self.say(f"resuming the adoption of pool {self.pool_id} started {adoption.started_utc:%Y-%m-%d %H:%M} UTC "
                     f"({len(done)} windows done)")
            return adoption, adoption.since, adoption.until, done
        since, until = since or EARLIEST, until or now.date()
        if not self.dry_run:
            adoption = services.adoption_start(pool_id=self.pool_id, since=since, until=until, since_arg=since_arg,
                                               until_arg=until_arg, now=now)
        return adoption, since, until, []

    def _walk(self, adoption: Adoption | None, windows: list[tuple[dt.date, dt.date]], bar) -> None:
        """Ask window by window, halving a window a backend capped (down to one day)."""
        while windows:
            first, last = windows.pop(0)
            answers = self._ask_all(dates=f"{_da(first)}-{_da(last)}", what=f"{first}..{last}")
            if answers is None:
                self.report.windows_left += 1
                bar.update((last - first).days + 1)
                continue
            capped = any(a.capped for a in answers.values())
            if capped and first < last:
                middle = first + (last - first) // 2
                windows[:0] = [(first, middle), (middle + dt.timedelta(days=1), last)]
                continue
            if capped:
                self.report.capped_days.append(_da(first))
            self._window_done(adoption, first, last, {backend_id: {uid: count for uid, (count, _) in a.studies.items()}
                                                      for backend_id, a in answers.items()}, capped=capped)
            bar.update((last - first).days + 1)

    def _window_done(self, adoption: Adoption | None, first: dt.date, last: dt.date,
                     answers: dict[str, dict[str, int | None]], *, capped: bool) -> None:
        studies = self._adopt(answers)
        if adoption is not None:
            services.adoption_window_done(adoption_id=adoption.id, first=first, last=last, undated=False,
                                          studies=studies, capped=capped, now=dt.datetime.now(dt.UTC))
        self.report.windows_done += 1

    def _from_one_answer(self, adoption: Adoption | None, windows: list[tuple[dt.date, dt.date]],
                         answers: dict[str, scu.StudyAnswer]) -> None:
        """Every backend answered the query without a date, none capped: each window not done
        takes the studies dated inside it from those answers (and is recorded done: every
        backend answered it), then the undated ones theirs."""
        starts = [_da(first) for first, _ in windows]
        buckets: list[dict[str, dict[str, int | None]]] = [{} for _ in windows]
        for backend_id, answer in answers.items():
            for bucket in buckets:
                bucket[backend_id] = {}
            for uid, (count, date) in answer.studies.items():
                at = bisect.bisect_right(starts, date) - 1
                if date and not scu.date_problem(date) and at >= 0 and date <= _da(windows[at][1]):
                    buckets[at][backend_id][uid] = count
        for (first, last), bucket in zip(windows, buckets, strict=True):
            self._window_done(adoption, first, last, bucket, capped=False)
        self._undated(adoption, answers)

    def _undated(self, adoption: Adoption | None, answers: dict[str, scu.StudyAnswer] | None) -> None:
        """The studies without a (valid) StudyDate, from the query without a date: its answers
        when they were had at the start (capped or not, asking again would give the same), else
        asked now."""
        if answers is None:
            answers = self._ask_all(dates="", what=UNDATED)
        if answers is None:
            self.report.windows_left += 1
            return
        capped = any(a.capped for a in answers.values())
        self.report.undated_capped = capped
        undated = {backend_id: {uid: count for uid, (count, date) in a.studies.items()
                                if not date or scu.date_problem(date)}
                   for backend_id, a in answers.items()}
        before = self.report.studies
        studies = self._adopt(undated)
        self.report.undated += self.report.studies - before
        if adoption is not None:
            services.adoption_window_done(adoption_id=adoption.id, first=None, last=None, undated=True,
                                          studies=studies, capped=capped, now=dt.datetime.now(dt.UTC))
        self.report.windows_done += 1

    def _end(self, bar, adoption, *, finished: bool) -> Report:
        bar.close()
        if adoption is not None and finished:
            services.adoption_finish(adoption_id=adoption.id, now=dt.datetime.now(dt.UTC))
        return self.report

    def _ask_all(self, *, dates: str, what: str) -> dict[str, scu.StudyAnswer] | None:
        """Every enabled backend's answers for one window, or None if one did not answer."""
        def one(peer: scu.Peer) -> scu.StudyAnswer | str:
            self.rate.wait(peer.id)
            try:
                answer = scu.find_studies(peer, calling_ae=self.calling_ae, timeout=self.timeout, dates=dates)
            except (scu.Unreachable, OSError, RuntimeError, ValueError) as exc:
                return str(exc) or type(exc).__name__
            if self.find_limit and len(answer.studies) + answer.rejected >= self.find_limit:
                answer.capped = True  # exactly the known cap: more may be there
            return answer
        peers = sorted(self.peers.values(), key=lambda p: p.id)
        results = dict(zip([p.id for p in peers], self.executor.map(one, peers), strict=True))
        silent = {backend_id: r for backend_id, r in results.items() if isinstance(r, str)}
        for backend_id, why in silent.items():
            logger.warning("adopt pool=%s window %s: backend %s did not answer: %s", self.pool_id, what, backend_id,
                           why)
            self.report.unanswered.append(f"window {what}: backend {backend_id}: {why}")
        if silent:
            return None
        answers = {backend_id: r for backend_id, r in results.items() if isinstance(r, scu.StudyAnswer)}
        self.report.rejected += sum(a.rejected for a in answers.values())
        return answers

    # -- deciding and claiming ---------------------------------------------------------------
    def _adopt(self, answers: dict[str, dict[str, int | None]]) -> int:
        """Bind the studies of one window's answers: {backend: {study: count}}."""
        holders: dict[str, dict[str, int | None]] = {}
        for backend_id in sorted(answers):
            for uid, count in answers[backend_id].items():
                holders.setdefault(uid, {})[backend_id] = count
        chosen: dict[str, str] = {}
        several: dict[str, dict[str, int | None] | None] = {}
        for uid, held in holders.items():
            if len(held) > 1:
                counts = {b: self._count(b, uid, c) for b, c in held.items()}
                several[uid] = dict(counts)  # what each backend holds: verified without asking again
                chosen[uid] = min(counts, key=lambda b: (-counts[b], b))
            else:
                chosen[uid] = next(iter(held))
        self.report.studies += len(holders)
        self.report.several += len(several)
        self._bind(chosen, several)
        return len(holders)

    def _count(self, backend_id: str, study_uid: str, count: int | None) -> int:
        """A count the backend did not give is counted at instance level."""
        if count is not None:
            return count
        try:
            return len(self.ask.instances(self.peers[backend_id], study_uid))
        except (scu.Unreachable, OSError, RuntimeError, ValueError) as exc:
            logger.warning("adopt study=%s: instances on %s could not be counted: %s", study_uid, backend_id, exc)
            return 0

    def _bind(self, chosen: dict[str, str], several: dict[str, dict[str, int | None] | None]) -> None:
        """Claim ``chosen`` (study -> backend) and verify the studies on several backends (with
        the counts each was found holding, when known). Those are claimed first and verified
        on threads of their own while the rest are claimed: their queries wait for the rate
        limit per backend, the claims for the database, so neither waits for the other."""
        if self.dry_run or not several:
            self._claim(chosen)
            return
        self._claim({uid: chosen[uid] for uid in several})
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="adopt-several") as verifier:
            splits = verifier.submit(self._verify_several, several)
            self._claim({uid: backend_id for uid, backend_id in chosen.items() if uid not in several})
            self.report.split += splits.result()

    def _claim(self, chosen: dict[str, str]) -> None:
        """Bind ``chosen`` (study -> backend) in batches, one transaction each (a commit per
        batch, not per statement); a study already bound keeps its binding."""
        items = sorted(chosen.items())
        for start in range(0, len(items), CLAIM_BATCH):
            batch = dict(items[start:start + CLAIM_BATCH])
            if self.dry_run:
                self._claim_batch(batch)
                continue
            with transaction.atomic():
                self._claim_batch(batch)

    def _claim_batch(self, batch: dict[str, str]) -> None:
        keys = [(self.pool_id, uid) for uid in batch]
        existing = selectors.bindings_backends(keys=keys)
        for (_, uid), backend_id in existing.items():
            self._kept(uid, backend_id, batch[uid])
        new = {key: batch[key[1]] for key in keys if key not in existing}
        if self.dry_run:
            self.report.bound += len(new)
            return
        # Inserted already marked adopted: no second statement per backend.
        held = services.bindings_claim_many(claims=new, now=dt.datetime.now(dt.UTC), adopted=True)
        for (_, uid), backend_id in held.items():
            if backend_id == batch[uid]:
                self.report.bound += 1
            else:  # runproxy bound it meanwhile: live traffic wins
                self._kept(uid, backend_id, batch[uid])

    def _kept(self, uid: str, bound: str, found: str) -> None:
        self.report.kept += 1
        if bound != found:
            line = f"study {uid} is bound to {bound} (kept); the backends suggest {found}"
            logger.warning("adopt pool=%s: %s", self.pool_id, line)
            self.report.disagreements.append(line)

    def _verify_several(self, several: dict[str, dict[str, int | None] | None]) -> list[str]:
        """Studies found on several backends are verified now, at instance level: split or
        whole. The counts adopt's answers gave are not asked again, and the instance lists
        are fetched first in an order that spreads them over the backends (under the rate
        limit per backend those queries are what a split study costs)."""
        everywhere = self.settings.model_copy(update={"check_other_backends": True})
        ask = self._prefetched(several)

        def one(uid: str) -> str | None:
            try:
                binding = selectors.binding_of_study_in_pool(pool_id=self.pool_id, study_uid=uid)
                if binding is None:
                    return None
                found = binding_verify(binding=binding, peers=self.peers, ask=ask, settings=everywhere,
                                       instance_level=True, known=several[uid])
                if found is not None and found.verdict == "split":
                    return f"study {uid} bound to {binding.backend_id}; held {found.held}"
                return None
            finally:
                connection.close()  # this thread's own connection: the threads end with the call

        # As many at once as Concurrency allows (the rate limit per backend still holds).
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="adopt-verify") as pool:
            return [line for line in pool.map(one, sorted(several)) if line]

    def _prefetched(self, several: dict[str, dict[str, int | None] | None]) -> Prefetched:
        """An Asker holding the instance list of each study on each backend that holds some
        of it (counts known). Fetched round-robin over the backends, Concurrency at once: a
        study's own queries, one after the other, would leave the other backends' turns
        unused while one waits for its turn. A list that could not be had is asked again by
        the verification (which postpones the study if its backend stays silent)."""
        by_backend: dict[str, list[tuple[str, str]]] = {}
        for uid, counts in sorted(several.items()):
            for backend_id, count in sorted((counts or {}).items()):
                if count != 0 and backend_id in self.peers:
                    by_backend.setdefault(backend_id, []).append((backend_id, uid))
        jobs = [job for turn in itertools.zip_longest(*by_backend.values()) for job in turn if job is not None]

        def fetch(job: tuple[str, str]) -> tuple[tuple[str, str], dict[str, str] | None]:
            try:
                return job, self.ask.instances(self.peers[job[0]], job[1])
            except (scu.Unreachable, OSError, RuntimeError, ValueError):
                return job, None

        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="adopt-list") as pool:
            lists = {job: found for job, found in pool.map(fetch, jobs) if found is not None}
        return Prefetched(self.calling_ae, self.rate, self.timeout, lists=lists)

    # -- from a CSV export -------------------------------------------------------------------
    def run_csv(self, path: Path) -> Report:
        """Adopt from ``StudyInstanceUID,backend`` rows (a header row is allowed). A bad row
        is reported with its line number and skipped."""
        chosen: dict[str, str] = {}
        several: dict[str, dict[str, int | None] | None] = {}
        for _line, uid, backend_id in self._rows(path):
            if uid in chosen and chosen[uid] != backend_id:
                several[uid] = None  # counts not known: asked
                chosen[uid] = min(chosen[uid], backend_id)
            else:
                chosen.setdefault(uid, backend_id)
        self.report.studies = len(chosen)
        self.report.several = len(several)
        self._bind(chosen, several)
        return self.report

    def _rows(self, path: Path) -> Iterator[tuple[int, str, str]]:
        with open(path, newline="", encoding="utf-8", errors="replace") as src:
            for number, row in enumerate(csv.reader(src), start=1):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if number == 1 and row[0].strip().lower() == "studyinstanceuid":
                    continue
                problem = None
                if len(row) != 2:
                    problem = f"expected 2 fields, got {len(row)}"
                else:
                    uid, backend_id = row[0].strip(), row[1].strip()
                    why = uid_problem(uid)
                    if why:
                        problem = f"StudyInstanceUID {shown(uid)} is {why}"
                    elif backend_id not in self.peers:
                        problem = f"backend {shown(backend_id)} is not an enabled backend of pool {self.pool_id}"
                if problem:
                    self.report.bad_rows.append(f"{path.name} line {number}: {problem}")
                    logger.warning("adopt %s line %d skipped: %s", path.name, number, problem)
                    continue
                yield number, uid, backend_id
