"""The transient spool where inbound data sets land while they are forwarded.

pynetdicom writes each incoming data set to a temporary file and deletes it once the
C-STORE handler returns. If the write itself fails (disk full) or the association dies
mid-transfer, the handler never runs and the partial file stays behind. SynthIQ gives
each process its own spool folder, removes the folders of processes that are gone, and
sweeps files nobody has written to for longer than the network timeout.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("synthiq.routing")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spool_prepare(*, base: Path) -> Path:
    """This process's spool folder (made the default temp dir); stale ones removed."""
    host = socket.gethostname()
    base.mkdir(parents=True, exist_ok=True)
    for folder in base.glob(f"{host}-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed the spool of a stopped process: %s", folder)
    spool = base / f"{host}-{os.getpid()}"
    spool.mkdir(exist_ok=True)
    tempfile.tempdir = str(spool)  # pynetdicom's NamedTemporaryFile lands here
    return spool


def spool_sweep(*, spool: Path, max_idle_seconds: float) -> int:
    """Delete spool files not written to for ``max_idle_seconds`` (abandoned transfers)."""
    removed = 0
    cutoff = time.time() - max_idle_seconds
    for path in spool.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # finished and deleted meanwhile
    if removed:
        logger.warning("removed %d abandoned spool file(s) from %s", removed, spool)
    return removed
