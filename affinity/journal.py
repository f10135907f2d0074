"""A local journal of the bindings this host has routed by: the affinity database's stand-in
while the database is away.

Every binding runproxy learns (claimed, found, or decided while the database was down) is
appended to one file in ``SYNTHIQ_VAR_DIR``, shared by the workers of the host. It is read
only when it matters:

- at start, bindings decided during a database outage and not yet written (a runproxy
  killed before the database came back) are taken up again and written when it is back;
- while the database is unreachable, a study missing from the hot cache (a restarted
  process, another worker's study) is looked up here before a new backend is chosen, so a
  restart during an outage does not split a study that was bound before it.

With the database up, the database is the truth: a binding deleted there is not revived
from here. Lines are ``pool, study, backend, P|W, unix time`` separated by tabs; ``P`` is a
binding not yet in the database, ``W`` one that is. The file is compacted at start (the
latest line per study, within the study window). A line cut short by a crash is skipped.

No value can forge a line: a binding is written only when its pool and backend are ids
(letters, digits, ``-`` and ``_``) and its study a valid UID, so no field holds a tab or a
line break; and every line read back is validated the same way, its time no later than now
(a small clock step aside), or skipped and counted in the log.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from routing.dicom.uids import shown, uid_problem

logger = logging.getLogger("synthiq.affinity")

Key = tuple[str, str]  # (pool id, study uid)
PENDING, WRITTEN = "P", "W"
# Lines kept by a compaction at most (the newest): bounds the file and a start's reading.
MAX_ENTRIES = 500_000
# A pool or backend id, as the config file allows them.
_ID = re.compile(r"[-a-zA-Z0-9_]{1,64}")
# A line stamped later than this past now is not believed (a forged or corrupted time).
CLOCK_SLACK_SECONDS = 300.0


def binding_problem(pool_id: str, study_uid: str, backend_id: str) -> str | None:
    """Why a binding cannot be a journal line, or None."""
    if not _ID.fullmatch(pool_id) or not _ID.fullmatch(backend_id):
        return "pool or backend is not an id"
    problem = uid_problem(study_uid)
    return f"study UID {problem}" if problem else None


def journal_path(var_dir: Path, database: dict) -> Path:
    """The journal of one affinity database: pointed at another database, runproxy must not
    bring this one's bindings into it."""
    where = "|".join(str(database.get(k, "")) for k in ("ENGINE", "HOST", "PORT", "NAME"))
    return var_dir / f"bindings-{hashlib.sha256(where.encode()).hexdigest()[:16]}.journal"


class BindingJournal:
    def __init__(self, path: Path, *, window_hours: float):
        self.path = path
        self.window_seconds = window_hours * 3600
        self._lock_path = path.with_name(path.name + ".lock")
        # Built from the file only while the database is away (see ``lookup``).
        self._index: dict[Key, str] | None = None
        self._offset = 0
        self._inode = 0

    # -- writing --------------------------------------------------------------
    def record(self, bindings: dict[Key, str], *, pending: bool = False, at: float | None = None) -> None:
        """Append these bindings. Never fails routing: a journal that cannot be written is logged."""
        if not bindings:
            return
        stamp = time.time() if at is None else at
        flag = PENDING if pending else WRITTEN
        valid = {}
        for (pool, study), backend in bindings.items():
            problem = binding_problem(pool, study, backend)
            if problem:
                logger.error("binding journal: pool=%s study=%s backend=%s not written: %s", shown(pool), shown(study),
                             shown(backend), problem)
            else:
                valid[(pool, study)] = backend
        lines = "".join(f"{pool}\t{study}\t{backend}\t{flag}\t{stamp:.3f}\n"
                        for (pool, study), backend in valid.items())
        try:
            with self._locked(fcntl.LOCK_SH), open(self.path, "a", encoding="ascii") as out:
                out.write(lines)  # one write on an O_APPEND file: workers' lines do not interleave
        except (OSError, UnicodeEncodeError) as exc:
            logger.error("binding journal %s not written (%s): a restart during a database outage may "
                         "not find these %d bindings", self.path, exc, len(bindings))

    # -- reading --------------------------------------------------------------
    def start(self) -> dict[Key, tuple[str, dt.datetime]]:
        """Compact the file and return the bindings still waiting for the database, with
        the time each was decided."""
        try:
            with self._locked(fcntl.LOCK_EX):
                latest = self._latest(self._lines(0)[0])
                keep = sorted(latest.items(), key=lambda item: item[1][2])[-MAX_ENTRIES:]
                tmp = self.path.with_name(self.path.name + ".tmp")
                with open(tmp, "w", encoding="ascii") as out:
                    out.writelines(f"{pool}\t{study}\t{backend}\t{flag}\t{stamp:.3f}\n"
                                   for (pool, study), (backend, flag, stamp) in keep)
                os.replace(tmp, self.path)
        except OSError as exc:
            logger.error("binding journal %s unreadable (%s): starting without it", self.path, exc)
            return {}
        pending = {key: (backend, dt.datetime.fromtimestamp(stamp, dt.UTC))
                   for key, (backend, flag, stamp) in keep if flag == PENDING}
        if pending:
            logger.warning("binding journal: %d bindings decided during a database outage are not yet "
                           "written; they will be when the database is reachable", len(pending))
        return pending

    def lookup(self, keys: list[Key]) -> dict[Key, str]:
        """The journal's bindings of these studies (for when the database is unreachable):
        the file is read in full the first time, then only what was appended since."""
        try:
            inode = self.path.stat().st_ino
            if self._index is None or inode != self._inode:
                self._index, self._offset, self._inode = {}, 0, inode
            lines, self._offset = self._lines(self._offset)
        except OSError:
            lines = []
        index = self._index if self._index is not None else {}
        for key, (backend, _, _) in self._latest(lines).items():
            index[key] = backend
        self._index = index
        return {key: index[key] for key in keys if key in index}

    def forget(self) -> None:
        """The database is back: drop the index built for the outage."""
        self._index = None

    # -- helpers --------------------------------------------------------------
    @contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, how)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _lines(self, offset: int) -> tuple[list[str], int]:
        """Whole lines from ``offset`` on, and the offset after the last whole one."""
        try:
            with open(self.path, "rb") as src:
                src.seek(offset)
                data = src.read()
        except FileNotFoundError:
            return [], 0
        end = data.rfind(b"\n") + 1
        return data[:end].decode("ascii", "replace").splitlines(), offset + end

    def _latest(self, lines: list[str]) -> dict[Key, tuple[str, str, float]]:
        """The last line per study within the window: (backend, flag, time)."""
        now = time.time()
        oldest, newest = now - self.window_seconds, now + CLOCK_SLACK_SECONDS
        latest: dict[Key, tuple[str, str, float]] = {}
        skipped = 0
        for line in lines:
            fields = line.split("\t")
            try:
                stamp = float(fields[4]) if len(fields) == 5 else math.nan
            except ValueError:
                stamp = math.nan
            if (not math.isfinite(stamp) or stamp > newest or fields[3] not in (PENDING, WRITTEN)
                    or binding_problem(fields[0], fields[1], fields[2])):
                skipped += 1
                continue
            key = (fields[0], fields[1])
            if stamp < oldest:
                latest.pop(key, None)
                continue
            latest[key] = (fields[2], fields[3], stamp)
        if skipped:
            logger.error("binding journal %s: %d line(s) that are not bindings skipped", self.path, skipped)
        return latest
