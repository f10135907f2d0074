"""A condition that can last (a database away, a backend refusing), logged so an operator can
act on it: once when it starts, then a reminder at most once per ``reminder_seconds`` saying
for how long and how many times, then once when it ends - never a line per try."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

REMINDER_SECONDS = 60.0


class Repeating:
    def __init__(self, logger: logging.Logger, what: str, *, level: int = logging.WARNING,
                 reminder_seconds: float = REMINDER_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.logger, self.what, self.level = logger, what, level
        self.reminder_seconds, self.clock = reminder_seconds, clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when it started; None while all is well
        self._said_at = 0.0
        self._times = 0

    @property
    def active(self) -> bool:
        return self._since is not None

    def failed(self, detail: object) -> None:
        """It happened (again): logged if it starts now, or as a reminder when one is due."""
        now = self.clock()
        with self._lock:
            self._times += 1
            if self._since is None:
                self._since, self._said_at, self._times = now, now, 1
                self.logger.log(self.level, "%s: %s", self.what, detail)
            elif now - self._said_at >= self.reminder_seconds:
                self._said_at = now
                self.logger.log(self.level, "%s: still, for %.0fs (%d times): %s", self.what, now - self._since,
                                self._times, detail)

    def ok(self) -> None:
        """It did not happen this time: if it had been going on, that it ended."""
        with self._lock:
            if self._since is None:
                return
            lasted, times = self.clock() - self._since, self._times
            self._since, self._times = None, 0
        self.logger.warning("%s: over after %.0fs (%d times)", self.what, lasted, times)
