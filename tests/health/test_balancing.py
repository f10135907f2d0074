"""Tier 2 fed by real heartbeats: runproxy polls real simulated backends (inline
heartbeats) and routes new studies by normalized load, by weight when the load is
unknown, and without herding between heartbeats."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from routing.simulators.synthetic import write_study
from tests.harness import placement, send_files
from tests.health.helpers import HealthEndpoint


def new_studies(directory: Path, count: int) -> list[Path]:
    """``count`` new single-instance studies."""
    return [write_study(directory / f"s{n}", count=1)[1][0] for n in range(count)]


def send_new_studies(port: int, directory: Path, count: int) -> None:
    sent = send_files(port, new_studies(directory, count))
    assert [s.status for s in sent] == [0] * count


def studies_per_backend(backends) -> Counter[str]:
    where = placement(backends)
    assert all(len(holders) == 1 for holders in where.values())
    return Counter(next(iter(holders)) for holders in where.values())


def holdings_clear(backend) -> None:
    import requests

    requests.delete(f"{backend.url}/api/holdings", timeout=5).raise_for_status()


@pytest.fixture
def certified_endpoint():
    e = HealthEndpoint()
    yield e
    e.close()


def test_new_studies_go_to_the_lowest_normalized_load_across_capacities_ties_to_lowest_id(
        cluster, tmp_path, certified_endpoint):
    # node-b has the shortest queue and node-c the longest, but what counts is depth over
    # capacity: node-c's 5 of 50 is the least busy.
    a = cluster.backend("node-a", queue_depth=20, capacity=100)  # 0.2
    b = cluster.backend("node-b", queue_depth=3, capacity=10)  # 0.3
    c = cluster.backend("node-c")
    certified_endpoint.serve({"status": "ok", "queue_depth": 5, "max_associations": 50})  # 0.1
    config = cluster.config([a, b, c.config(Health={"Mode": "certified", "Url": certified_endpoint.url})])
    proxy = cluster.proxy(config)
    send_new_studies(proxy.port, tmp_path / "lowest", 3)
    assert studies_per_backend([a, b, c]) == {"node-c": 3}
    proxy.process.stop()

    # Equal normalized loads (10/100, 1/10, and a certified node's own load): lowest id wins.
    a.control(queue_depth=10)
    b.control(queue_depth=1)
    certified_endpoint.serve({"status": "ok", "load": 0.1, "capacity": 50})
    for backend in (a, b, c):
        holdings_clear(backend)
    proxy = cluster.proxy(config, name="runproxy-equal")
    send_new_studies(proxy.port, tmp_path / "equal", 1)
    assert studies_per_backend([a, b, c]) == {"node-a": 1}


def test_liveness_backend_of_weight_one_gets_a_third_of_new_studies_beside_two_native_ones(cluster, tmp_path):
    natives = [cluster.backend(f"node-{x}") for x in "ab"]
    live = cluster.backend("live")
    config = cluster.config(natives + [live.config(Health={"Mode": "liveness", "Probe": "echo"}, Weight=1)])
    proxy = cluster.proxy(config)
    send_new_studies(proxy.port, tmp_path, 90)
    counts = studies_per_backend(natives + [live])
    print(f"90 new studies: {dict(counts)}")
    assert 27 <= counts["live"] <= 33, counts
    assert counts["node-a"] + counts["node-b"] == 90 - counts["live"]
    # The liveness backend's load is unknown (null), not zero.
    from tests.health.helpers import health_row

    assert health_row("live").healthy and health_row("live").load is None


def test_fifty_new_studies_inside_one_heartbeat_interval_do_not_herd_onto_one_backend(cluster, tmp_path):
    from health.selectors import heartbeat_last_round

    backends = [cluster.backend(f"node-{x}") for x in "abc"]
    # A long interval: the whole burst happens between two heartbeats, when every node
    # still looks as empty as at the last report.
    proxy = cluster.proxy(cluster.config(backends, HeartbeatIntervalSeconds=60, HeartbeatTimeoutSeconds=180))
    round_before = heartbeat_last_round(pool_id="main")
    send_new_studies(proxy.port, tmp_path, 50)
    assert heartbeat_last_round(pool_id="main") == round_before, "a heartbeat ran during the burst"
    counts = studies_per_backend(backends)
    print(f"50 new studies in one interval: {dict(counts)}")
    assert sum(counts.values()) == 50
    assert max(counts.values()) <= 20, counts
