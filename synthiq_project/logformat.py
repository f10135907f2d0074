"""Log line formats: plain text or one JSON object per line (LOG_FORMAT), each line
carrying the process id and, under ``runproxy --workers``, the worker's index."""

from __future__ import annotations

import json
import logging
import re

# Set in a runproxy worker after the fork ("" in the parent and in single-process runs).
WORKER = ""


# Characters that would let a value a peer sent (an AE title, a UID, a Patient ID, a
# backend's Error Comment, a TLS peer name) start a line of its own or rewrite the
# terminal: C0 and C1 controls, DEL, and Unicode's line and paragraph separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escaped(text: str) -> str:
    """``text`` with every control character written as an escape (\\n, \\x1b, ...)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class ProcessTags(logging.Filter):
    """Adds ``worker`` ("/w2" in worker 2, "" elsewhere) to every record, and escapes its
    message: one record is one line, whatever a peer put in the values it carries."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = f"/w{WORKER}" if WORKER != "" else ""
        escape_message(record)
        return True


def escape_message(record: logging.LogRecord) -> None:
    """Escape the record's message once (a traceback appended later keeps its lines)."""
    if getattr(record, "escaped", False):
        return
    record.escaped = True
    message = record.getMessage()
    if _UNPRINTABLE.search(message):
        record.msg, record.args = escaped(message), ()


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname, "pid": record.process,
                "worker": WORKER if WORKER != "" else None, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
