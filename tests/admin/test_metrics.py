"""/metrics: Prometheus text that parses, and counters that move with real traffic."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from routing.simulators.synthetic import write_study
from synthiq_project.version import VERSION
from tests.admin.support import healthy
from tests.harness import send_files, wait_for


def _scrape(port: int) -> dict[str, list]:
    rsp = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)  # no credentials: scrapers have none
    assert rsp.status_code == 200 and rsp.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(rsp.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _total(samples, name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_their_counters_move_with_traffic(cluster, tmp_path):
    # node-a looks emptiest but refuses everything; node-b reports 45 of 50 busy.
    a = cluster.backend("node-a", status="0xA700")
    b = cluster.backend("node-b", queue_depth=45)
    proxy = cluster.proxy(cluster.config([a, b], HeartbeatTimeoutSeconds=600), http=True)
    healthy([a, b], loads={"node-a": 0.0, "node-b": 0.9})

    _, first = write_study(tmp_path / "s1", count=3)
    assert [s.status for s in send_files(proxy.port, first)] == [0xA700] * 3
    m = wait_for(lambda: (s := _scrape(proxy.http_port)) and _total(s, "synthiq_instances_received_total") == 3 and s,
                 timeout=15, interval=0.2, what="published counters in /metrics")

    assert _total(m, "synthiq_instances_routed_total", tier="least-busy") == 1
    assert _total(m, "synthiq_instances_routed_total", tier="association-cached") == 2
    assert _total(m, "synthiq_routing_decisions_total") == 1
    assert _total(m, "synthiq_forward_failures_total", status_class="0xA7xx") == 3
    assert _total(m, "synthiq_forward_responses_total", status_class="0xA7xx") == 3
    assert _total(m, "synthiq_forward_latency_seconds_count", backend="node-a") == 3
    assert _total(m, "synthiq_forward_latency_seconds_bucket", backend="node-a", le="+Inf") == 3
    assert _total(m, "synthiq_forward_latency_seconds_sum", backend="node-a") > 0
    buckets = sorted((float(s.labels["le"]), s.value) for s in m["synthiq_forward_latency_seconds_bucket"]
                     if s.labels["backend"] == "node-a")  # every backend has one (node-b's at zero)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert _total(m, "synthiq_backend_healthy", backend="node-a") == 1
    assert _total(m, "synthiq_backend_load", backend="node-b") == 0.9
    assert _total(m, "synthiq_backend_weight", backend="node-b") == 1
    assert _total(m, "synthiq_affinity_cache_entries") == 1
    assert _total(m, "synthiq_open_associations") == 0 and _total(m, "synthiq_proxy_processes") == 1
    assert _total(m, "synthiq_database_ok") == 1 and _total(m, "synthiq_listener_accepting", pool="main") == 1
    assert _total(m, "synthiq_heartbeat_stale") == 0
    assert _total(m, "synthiq_build_info", version=VERSION) == 1

    # More traffic: a second study, and a late re-send of the first on a new association.
    _, second = write_study(tmp_path / "s2", count=2)
    assert [s.status for s in send_files(proxy.port, second)] == [0xA700] * 2
    assert [s.status for s in send_files(proxy.port, first[:1])] == [0xA700]
    m = wait_for(lambda: (s := _scrape(proxy.http_port)) and _total(s, "synthiq_instances_received_total") == 6 and s,
                 timeout=15, interval=0.2, what="the counters to move")
    assert _total(m, "synthiq_forward_failures_total", status_class="0xA7xx") == 6
    assert _total(m, "synthiq_instances_routed_total", tier="affinity-hit") == 1
    assert _total(m, "synthiq_routing_decisions_total") == 3
    assert _total(m, "synthiq_forward_latency_seconds_count", backend="node-a") == 6
    assert _total(m, "synthiq_affinity_cache_entries") == 2

    from pools.services import backend_set_draining

    backend_set_draining(backend_id="node-a", draining=True)
    assert _total(_scrape(proxy.http_port), "synthiq_backend_draining", backend="node-a") == 1


def test_latency_histogram_buckets_follow_prometheus_le_semantics():
    from routing.telemetry import LATENCY_BUCKETS, Telemetry

    stats = Telemetry(process_id="test")
    for seconds in (0.001, 0.003, 0.003, 20.0):
        stats.forwarded("node-a", 0, seconds)
    snap = stats.snapshot()
    counts = snap["latency"]["node-a"]
    assert snap["latency_buckets"] == list(LATENCY_BUCKETS) and len(counts) == len(LATENCY_BUCKETS) + 1
    assert counts[LATENCY_BUCKETS.index(0.001)] == 1  # a value equal to a bound is `le` that bound
    assert counts[LATENCY_BUCKETS.index(0.005)] == 2
    assert counts[-1] == 1  # slower than every bound: +Inf only
    assert sum(counts) == 4
