"""A lasting condition is logged when it starts, as a reminder at most once a minute, and when it ends."""

from __future__ import annotations

import logging

from synthiq_project.repeating import Repeating


def test_a_condition_is_said_when_it_starts_reminded_once_a_minute_and_said_when_it_ends(caplog):
    now = [1000.0]
    condition = Repeating(logging.getLogger("tests.repeating"), "database away", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tests.repeating"):
        for _ in range(120):  # a try every second for two minutes
            condition.failed("connection refused")
            now[0] += 1.0
        condition.ok()
        condition.ok()  # nothing more to say
    assert [r.getMessage() for r in caplog.records] == [
        "database away: connection refused",
        "database away: still, for 60s (61 times): connection refused",
        "database away: over after 120s (120 times)",
    ]
