"""Log lines leave the event loop through a queue.

A handler that writes to the console or a file can block (a slow disk, a full pipe),
and a blocked handler on the loop's thread would stall every association of the
worker. ``start`` puts a QueueHandler in front of SynthIQ's handlers and lets one
thread of their own do the writing; ``stop`` flushes and puts them back.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
from dataclasses import dataclass

from synthiq_project import logformat

LOGGERS = ("synthiq", "pynetdicom")


class _EscapingQueueHandler(logging.handlers.QueueHandler):
    """Escapes the message before the traceback is merged into it (see logformat)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        logformat.escape_message(record)
        return super().prepare(record)


@dataclass
class QueuedLogging:
    listener: logging.handlers.QueueListener
    handlers: dict[str, list[logging.Handler]]

    def stop(self) -> None:
        self.listener.stop()
        for name, handlers in self.handlers.items():
            logging.getLogger(name).handlers = handlers


def start() -> QueuedLogging:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    before = {name: list(logging.getLogger(name).handlers) for name in LOGGERS}
    unique: list[logging.Handler] = []
    for handlers in before.values():
        unique += [h for h in handlers if h not in unique]
    front = _EscapingQueueHandler(records)
    for name in LOGGERS:
        logging.getLogger(name).handlers = [front]
    listener = logging.handlers.QueueListener(records, *unique, respect_handler_level=True)
    listener.start()
    return QueuedLogging(listener, before)
