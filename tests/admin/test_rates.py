"""The rate history: what one process samples (routing/telemetry.py) and how the status
read model adds several processes' samples up into rates (routing/operator/selectors.py)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import pytest

from routing.models import ProxyProcess
from routing.operator.selectors import rate_series
from routing.telemetry import RATE_SAMPLES, Telemetry
from tests.harness import PYTHON, ROOT


def _process(telemetry: Telemetry) -> ProxyProcess:
    return ProxyProcess(id=telemetry.process_id, counters=telemetry.snapshot())


def test_a_process_samples_once_per_slot_and_keeps_a_bounded_ring():
    t = Telemetry(process_id="p1", sample_seconds=10)
    t.samples.clear()  # the sample taken at start is at the real clock; these tests use their own
    t.sample(now=1000.0)
    t.forwarded("node-a", 0x0000, 0.01, nbytes=5_000)
    t.sample(now=1009.9)  # same slot: nothing new
    t.sample(now=1010.2)
    assert [(s["t"], s["received"], s["bytes"]) for s in t.samples] == [(1000, 0, 0), (1010, 1, 5_000)]
    assert t.samples[-1]["backends"] == {"node-a": {"forwarded": 1, "bytes": 5_000}}
    for n in range(2, RATE_SAMPLES + 10):
        t.sample(now=1000.0 + 10 * n)
    assert len(t.samples) == RATE_SAMPLES


def test_rates_are_summed_over_processes_per_slot_with_failures():
    now = 2000.0
    a, b = Telemetry(process_id="a", sample_seconds=10), Telemetry(process_id="b", sample_seconds=10)
    for t in (a, b):
        t.samples.clear()
        t.sample(now=now - 20)
    for _ in range(20):
        a.forwarded("node-a", 0x0000, 0.01, nbytes=1_000_000)
    b.forwarded("node-b", 0xA700, 0.01, nbytes=0)  # the backend answered a failure
    b.forward_failed(None, 0xA701)  # SynthIQ's own failure
    a.sample(now=now - 10)  # exactly one slot later
    b.sample(now=now - 8)  # two seconds late in the same slot: divided by 12 s
    series = rate_series(processes=[_process(a), _process(b)], now=dt.datetime.fromtimestamp(now, dt.UTC))
    assert series["interval_seconds"] == 10
    [point] = series["points"]
    assert point["t"] == dt.datetime.fromtimestamp(now - 10, dt.UTC)
    assert point["instances_per_s"] == round(20 / 10 + 2 / 12, 3)
    assert point["mb_per_s"] == 2.0
    assert point["failures_per_s"] == round(2 / 12, 3)
    assert point["backends"] == {"node-a": {"instances_per_s": 2.0, "mb_per_s": 2.0},
                                 "node-b": {"instances_per_s": round(1 / 12, 3), "mb_per_s": 0.0}}


def test_rates_older_than_the_window_are_left_out():
    t = Telemetry(process_id="old", sample_seconds=10)
    t.samples.clear()
    for n in range(3):
        t.sample(now=1000.0 + 10 * n)
    later = dt.datetime.fromtimestamp(1020.0 + 10 * RATE_SAMPLES + 1, dt.UTC)
    assert rate_series(processes=[_process(t)], now=later)["points"] == []
    assert rate_series(processes=[], now=later) == {"interval_seconds": 10, "points": []}


@pytest.mark.parametrize("value", ["0", "abc", "-1", "100000"])
def test_a_bad_sampling_interval_fails_fast_naming_the_variable(value):
    done = subprocess.run([PYTHON, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, SYNTHIQ_RATE_SAMPLE_SECONDS=value))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("synthiq: SYNTHIQ_RATE_SAMPLE_SECONDS:")
