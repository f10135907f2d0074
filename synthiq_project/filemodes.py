"""What SynthIQ writes is readable by its own user only.

The SQLite database (and its WAL and SHM), the binding journal, the logs (route lines carry
Patient IDs) and everything else under SYNTHIQ_VAR_DIR or at LOG_FILE hold patient and
site data. Rather than chmod each file wherever it is opened (SQLite, logging and Celery
open theirs themselves), every SynthIQ entry point sets the process umask before anything
is created: files come out 0600, directories 0700 (SYNTHIQ_VAR_DIR itself when settings
create it), and the processes they start (runproxy's workers, the demo's backends) inherit it.

collectstatic is not exempted: its output lives in var/static, inside that 0700 directory,
and is served by SynthIQ's own web process (WhiteNoise), so owner-only files lose nothing.
"""

from __future__ import annotations

import os

OWNER_ONLY_UMASK = 0o077


def files_owner_only() -> None:
    os.umask(OWNER_ONLY_UMASK)
