"""A short run of the fault campaign (`make chaos` runs the whole one): every kind of
fault strikes at least once, runproxy is killed and restarted twice, and the ledger must
show no false success, no split and no moved study, and every study first seen while
the database was down bound once it was back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.campaign]


def test_the_fault_campaign_in_small_finds_no_false_success_split_or_moved_study(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the chaos campaign needs root (a network namespace, iptables, PostgreSQL run as postgres): "
                    "run make test as root, as CI does")
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SYNTHIQ_VAR_DIR")}
    result = subprocess.run([sys.executable, "-m", "bench.chaos", "--stores", "150", "--restarts", "2",
                             "--restart-every", "15", "--max-minutes", "5", "--out", str(out),
                             "--tmp-dir", str(tmp_path / "work")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    summary = json.loads(out.read_text()) if out.exists() else {}
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict | list)}, indent=1))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary["false_successes"] == 0 and summary["split_studies"] == 0 and summary["moved_studies"] == 0
    assert summary["runproxy_restarts"] >= 2 and summary["stores"] >= 150
    assert summary["studies_sent_during_database_outage"] > 0
    assert any(status.startswith("0xA7") for status in summary["statuses"]), summary["statuses"]
