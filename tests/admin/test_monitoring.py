"""The shipped Grafana dashboard and Prometheus alert rules: the rules pass promtool, and
every metric either of them names exists in the /metrics of a running runproxy."""

from __future__ import annotations

import json
import re
import subprocess

import requests
from prometheus_client.parser import text_string_to_metric_families

from routing.simulators.synthetic import write_study
from tests.admin.support import healthy
from tests.harness import ROOT, require_tool, send_files, wait_for

MONITORING = ROOT / "docs" / "monitoring"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_info")


def _named_metrics() -> set[str]:
    rules = (MONITORING / "alerts.yml").read_text()
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return set(re.findall(r"\bsynthiq_[a-z0-9_]+", rules + "\n".join(exprs)))


def test_the_alert_rules_pass_promtool():
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "rules", str(MONITORING / "alerts.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_every_metric_the_dashboard_and_rules_name_is_exported(cluster, tmp_path):
    a = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([a], HeartbeatTimeoutSeconds=600), http=True)
    healthy([a], loads={"node-a": 0.2})
    _, files = write_study(tmp_path / "s", count=2)
    assert [s.status for s in send_files(proxy.port, files)] == [0, 0]

    def exported() -> set[str] | None:
        text = requests.get(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=10).text
        names = set()
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            names.update(s.name for s in family.samples)
        return names if "synthiq_instances_received_total" in names else None

    names = wait_for(exported, timeout=15, what="the published counters")
    named = _named_metrics()
    assert len(named) >= 15
    missing = sorted(n for n in named
                     if n not in names and not any(n.endswith(s) and n.removesuffix(s) in names for s in SUFFIXES))
    assert not missing, f"named by the dashboard or the rules but not exported: {missing}"


def test_a_fresh_runproxy_has_a_sample_of_every_series_the_dashboard_and_rules_name(cluster):
    """Before any traffic: what a panel or an alert reads is there (at zero), so rate() and
    increase() see the first event. The backend reports its load (native health)."""
    a = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([a]), http=True)

    def exported() -> set[str] | None:
        text = requests.get(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=10).text
        names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        return names if "synthiq_instances_received_total" in names else None

    names = wait_for(exported, timeout=15, what="a published runproxy")
    missing = sorted(n for n in _named_metrics() if n not in names)
    assert not missing, f"named by the dashboard or the rules but without a sample: {missing}"
    assert "synthiq_audit_messages_total" in names  # audit off: there, at zero


def test_a_fresh_runproxy_exports_the_failure_and_operation_series_at_zero(cluster):
    """rate() sees the first failure only if the series existed before it: the status classes
    SynthIQ returns itself and every service are there at zero before any traffic."""
    a = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([a]), http=True)

    def samples() -> dict[tuple[str, tuple], float] | None:
        text = requests.get(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=10).text
        found = {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "process"))): s.value
                 for family in text_string_to_metric_families(text) for s in family.samples}
        return found if any(name == "synthiq_forward_failures_total" for name, _ in found) else None

    found = wait_for(samples, timeout=15, what="a published runproxy")
    for cls in ("0xA7xx", "0xC0xx", "0x01xx"):
        assert found[("synthiq_forward_failures_total", (("status_class", cls),))] == 0
    for service in ("C-FIND", "C-MOVE", "C-GET", "N-ACTION"):
        assert found[("synthiq_operations_total", (("service", service), ("status_class", "success")))] == 0
    assert found[("synthiq_backend_violations_total", ())] == 0
