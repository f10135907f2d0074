"""Inline heartbeats: the heartbeat service on a background thread of runproxy, used
when no Celery broker is configured (the embedded default)."""

from __future__ import annotations

import logging
import threading
import time

from health.services import HeartbeatPolicy, heartbeat_run_all, heartbeat_runner_name

logger = logging.getLogger("synthiq.health")


class InlineHeartbeats:
    def __init__(self, *, pool_ids: list[str], policy: HeartbeatPolicy):
        self._plan = (list(pool_ids), policy)
        self.runner = heartbeat_runner_name(kind="inline")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def policy(self) -> HeartbeatPolicy:
        return self._plan[1]

    def update(self, *, pool_ids: list[str], policy: HeartbeatPolicy) -> None:
        """A reload's pools and policy, swapped in as one value: a round never runs the new
        pools under the old policy or the other way round."""
        self._plan = (list(pool_ids), policy)

    def run_once(self) -> None:
        pool_ids, policy = self._plan
        heartbeat_run_all(policy=policy, runner=self.runner, pool_ids=pool_ids)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="heartbeats", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_round = time.monotonic() + self.policy.interval_seconds
        while not self._stop.wait(max(0.0, next_round - time.monotonic())):
            # Fixed-rate schedule: a slow round does not push every later one back. The
            # policy is read each round: a reload (SIGHUP) may have changed it.
            next_round = max(next_round + self.policy.interval_seconds, time.monotonic())
            try:
                self.run_once()
            except Exception:  # the next round may well succeed (database back, etc.)
                logger.exception("inline heartbeat round failed")

    def stop(self, *, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
