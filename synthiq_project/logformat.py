"""Log line formats: plain text or one JSON object per line (LOG_FORMAT), each line
carrying the process id and, under ``runproxy --workers``, the worker's index."""

from __future__ import annotations

import json
import logging

# Set in a runproxy worker after the fork ("" in the parent and in single-process runs).
WORKER = ""


class ProcessTags(logging.Filter):
    """Adds ``worker`` ("/w2" in worker 2, "" elsewhere) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = f"/w{WORKER}" if WORKER != "" else ""
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname, "pid": record.process,
                "worker": WORKER if WORKER != "" else None, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
