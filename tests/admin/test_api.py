"""The JSON APIs, fed by real C-STOREs routed through runproxy (its web app on waitress).

One cluster serves the module (starting three backends and a proxy costs seconds on two
cores); the tests that change state (commitment, drain) undo or own what they change.
"""

from __future__ import annotations

import os

import pytest

from routing.simulators.synthetic import write_study
from synthiq_project.version import VERSION
from tests.admin.support import Api, api_user, clean_database, healthy, study_root
from tests.harness import Cluster, send_files, wait_for

pytestmark = pytest.mark.postgres

TIERS = {"affinity-hit", "least-busy", "weighted", "association-cached", "fallback", "rendezvous"}


def _token(backend_id: str) -> str:
    return f"commit-token-{backend_id}-0123456789"


@pytest.fixture(scope="module")
def cluster_once(tmp_path_factory):
    clean_database()
    c = Cluster(tmp=tmp_path_factory.mktemp("admin-api"), env=dict(os.environ))
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture(scope="module")
def routed(cluster_once):
    """Three backends (two reporting load, one liveness), three studies routed through
    runproxy over one association, then one late re-send of the first on a new one."""
    cluster, tmp_path = cluster_once, cluster_once.tmp
    a = cluster.backend("node-a")
    b = cluster.backend("node-b", queue_depth=25)
    c = cluster.backend("node-c")
    config = cluster.config(
        [
            a.config(CommitmentToken=_token("node-a")),
            b.config(CommitmentToken=_token("node-b")),
            c.config(CommitmentToken=_token("node-c"), Health={"Mode": "liveness", "Probe": "echo"}),
        ],
        HeartbeatTimeoutSeconds=600,
    )
    proxy = cluster.proxy(config, http=True)
    healthy([a, b, c], loads={"node-a": 0.0, "node-b": 0.5, "node-c": None})
    root = study_root()
    studies = {}
    for suffix in ("1", "2", "11"):
        suid, files = write_study(tmp_path / suffix, count=2, study_uid=f"{root}.{suffix}")
        studies[suid] = files
    files = [f for fs in studies.values() for f in fs]
    assert [s.status for s in send_files(proxy.port, files)] == [0] * 6
    first = f"{root}.1"
    assert [s.status for s in send_files(proxy.port, studies[first][:1])] == [0]
    user = api_user()
    api = Api(proxy.http_port, user.token)
    api.wait_counters(lambda s: s["counters"]["received"] == 7 and s["counters"]["decisions"] == 4)
    return api, proxy, root, studies, user


def test_status_aggregates_the_published_counters_listeners_cache_and_health(routed):
    api, proxy, *_ = routed
    status = api.json("/api/status")
    assert status["version"] == VERSION

    counters = status["counters"]
    assert counters["received"] == 7 and counters["succeeded"] == 7 and counters["failed"] == 0
    assert counters["decisions"] == 4
    # Three studies decided once each on the first association, then followed its cache;
    # the late re-send of the first study is an affinity hit.
    assert counters["cache_hits"] == 3
    assert set(counters["routed"]) == TIERS
    assert counters["routed"]["association-cached"] == 3
    assert counters["routed"]["affinity-hit"] == 1
    assert counters["routed"]["least-busy"] + counters["routed"]["weighted"] == 3
    assert counters["routed"]["fallback"] == 0
    assert counters["statuses"] == {"success": 7}
    assert counters["associations"] == 2

    assert status["cache_size"] == 3
    assert len(status["processes"]) == 1 and status["processes"][0]["db_ok"] is True
    assert status["listeners"] == [
        {"process": status["processes"][0]["id"], "pool": "main", "ae_title": "SYNTHIQ", "port": proxy.port,
         "accepting": True}
    ]
    assert status["pools_without_listener"] == []
    assert status["database"] == {"ok": True, "errors": [], "pending_bindings": 0}
    # runproxy publishes its heartbeat interval (1 s in the test config), mode and stale flag.
    assert {k: status["heartbeat"][k] for k in ("stale", "source", "mode", "interval_seconds")} == {
        "stale": False, "source": "proxy", "mode": "inline", "interval_seconds": 1}
    assert [p["pool"] for p in status["heartbeat"]["pools"]] == ["main"]
    by_id = {b["id"]: b for b in status["backends"]}
    assert set(by_id) == {"node-a", "node-b", "node-c"}
    assert by_id["node-b"]["load"] == 0.5 and by_id["node-b"]["state"] == "healthy"
    assert by_id["node-c"]["load"] is None  # liveness: unknown, never 0


def test_status_has_rates_and_the_calling_ae_table(routed):
    api, *_ = routed
    status = api.json("/api/status")
    assert status["rates"]["interval_seconds"] == 10  # SYNTHIQ_RATE_SAMPLE_SECONDS unset
    wait_for(lambda: api.json("/api/status")["rates"]["points"], timeout=25, interval=0.5,
             what="a second rate sample (every 10 s)")
    rates = api.json("/api/status")["rates"]
    for point in rates["points"]:
        assert set(point) == {"t", "instances_per_s", "mb_per_s", "failures_per_s", "backends"}
        assert all(set(b) == {"instances_per_s", "mb_per_s"} for b in point["backends"].values())
        assert point["failures_per_s"] == 0
    # The seven instances arrived after the process's first (all-zero) sample.
    assert sum(p["instances_per_s"] for p in rates["points"]) > 0
    # send_files calls as MODALITY: three studies, to the backends the decisions name.
    decided = {d["backend"] for d in api.json("/api/activity")["results"]}
    [modality] = status["calling_aes"]
    assert modality["calling_ae"] == "MODALITY" and modality["studies"] == 3
    assert set(modality["backends"]) == decided
    assert all(b["down_since_utc"] is None for b in status["backends"])


def test_pools_lists_backends_with_mode_health_load_weight_draining_and_counters(routed):
    api, *_ = routed
    pools = api.json("/api/pools")
    assert [p["id"] for p in pools] == ["main"]
    backends = {b["id"]: b for b in pools[0]["backends"]}
    assert list(backends) == ["node-a", "node-b", "node-c"]
    assert backends["node-a"]["health_mode"] == "native" and backends["node-a"]["health"]["load"] == 0.0
    assert backends["node-c"]["health_mode"] == "liveness" and backends["node-c"]["health"]["load"] is None
    assert backends["node-c"]["load_reported"] is False
    for b in backends.values():
        assert b["weight"] == 1 and b["draining"] is False and b["enabled"] is True
        assert b["health"]["state"] == "healthy" and b["health"]["healthy"] is True
    assert sum(b["counters"]["forwarded"] for b in backends.values()) == 7
    assert all(b["counters"]["failed"] == 0 for b in backends.values())
    busy = [b for b in backends.values() if b["counters"]["forwarded"]]
    assert all(b["counters"]["statuses"] == {"success": b["counters"]["forwarded"]} for b in busy)
    assert all(b["counters"]["mean_forward_ms"] > 0 for b in busy)
    # node-b reported half its capacity busy: the least-busy tier never picked it.
    assert backends["node-b"]["counters"]["forwarded"] == 0


def test_activity_lists_first_instance_decisions_newest_first_with_their_tier(routed):
    api, _, root, studies, _ = routed
    results = api.json("/api/activity")["results"]
    assert len(results) == 4
    assert [r["at_utc"] for r in results] == sorted((r["at_utc"] for r in results), reverse=True)
    newest = results[0]
    assert newest["study_uid"] == f"{root}.1" and newest["tier"] == "affinity-hit"
    assert newest["calling_ae"] == "MODALITY" and newest["modality"] == "CT" and newest["pool"] == "main"
    assert {r["study_uid"] for r in results} == set(studies)
    assert {r["tier"] for r in results[1:]} <= {"least-busy", "weighted"}
    # The re-send went where the first decision for that study sent it.
    first = next(r for r in results[1:] if r["study_uid"] == f"{root}.1")
    assert newest["backend"] == first["backend"]

    assert len(api.json("/api/activity", limit=2)["results"]) == 2
    assert [r["tier"] for r in api.json("/api/activity", tier="affinity-hit")["results"]] == ["affinity-hit"]
    assert api.json("/api/activity", backend="node-b")["results"] == []
    assert api.get("/api/activity", limit=0).status_code == 400
    assert api.get("/api/activity", tier="nonsense").status_code == 400


def test_affinity_pages_and_searches_by_suid_prefix_with_commitment_state(routed):
    api, _, root, studies, _ = routed
    # Instance counts are written behind (batched about once a second).
    wait_for(lambda: {r["study_uid"]: r["instance_count"] for r in api.json("/api/affinity")["results"]}
             == {f"{root}.1": 3, f"{root}.2": 2, f"{root}.11": 2}, timeout=10, what="instance counts")

    page1 = api.json("/api/affinity", page_size=2)
    assert page1["count"] == 3 and len(page1["results"]) == 2 and page1["next"] and page1["previous"] is None
    page2 = api.json("/api/affinity", page_size=2, page=2)
    assert len(page2["results"]) == 1 and page2["next"] is None
    assert {r["study_uid"] for r in page1["results"] + page2["results"]} == set(studies)
    assert api.get("/api/affinity", page=3, page_size=2).status_code == 404

    row = page1["results"][0]
    assert set(row) == {"study_uid", "pool", "backend", "first_seen_utc", "last_seen_utc", "instance_count",
                        "committed", "committed_utc"}
    assert row["committed"] is False and row["committed_utc"] is None and row["pool"] == "main"

    # A prefix search: `<root>.1` matches `<root>.1` and `<root>.11`, not `<root>.2`.
    found = api.json("/api/affinity", search=f"{root}.1")
    assert sorted(r["study_uid"] for r in found["results"]) == [f"{root}.1", f"{root}.11"]
    assert api.json("/api/affinity", search=f"{root}.2")["count"] == 1
    assert api.json("/api/affinity", search="9.9.9")["count"] == 0
    committed, uncommitted = (api.json("/api/affinity", committed=v)["count"] for v in ("true", "false"))
    assert committed + uncommitted == 3
    assert api.get("/api/affinity", committed="maybe").status_code == 400


def test_backend_commits_only_the_studies_bound_to_it(routed):
    api, proxy, root, *_ = routed
    suid = f"{root}.1"
    state = api.json(f"/api/affinity/{suid}/commitment")
    assert state["committed"] is False and len(state["bindings"]) == 1
    owner = state["bindings"][0]["backend"]
    other = next(b for b in ("node-a", "node-b", "node-c") if b != owner)
    bare = Api(proxy.http_port)

    refused = bare.post(f"/api/affinity/{suid}/commitment", headers={"Authorization": f"Bearer {_token(other)}"})
    assert refused.status_code == 403, refused.text
    assert api.json(f"/api/affinity/{suid}/commitment")["committed"] is False

    bad = bare.post(f"/api/affinity/{suid}/commitment", headers={"Authorization": "Bearer not-a-backend-token"})
    assert bad.status_code == 401
    # A user token is not a backend: users read the state, backends report it.
    assert api.post(f"/api/affinity/{suid}/commitment").status_code == 403
    unknown = bare.post(f"/api/affinity/{root}.999/commitment", headers={"Authorization": f"Bearer {_token(owner)}"})
    assert unknown.status_code == 404

    ok = bare.post(f"/api/affinity/{suid}/commitment", headers={"Authorization": f"Bearer {_token(owner)}"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["committed"] is True and ok.json()["bindings"][0]["committed_utc"]
    assert api.json(f"/api/affinity/{suid}/commitment")["committed"] is True
    committed = api.json("/api/affinity", committed="true")["results"]
    assert [r["study_uid"] for r in committed] == [suid]
    # A backend token reads nothing.
    assert bare.get(f"/api/affinity/{suid}/commitment").status_code in (401, 403)
    assert bare.session.get(bare.base + "/api/status", headers={"Authorization": f"Bearer {_token(owner)}"},
                            timeout=10).status_code in (401, 403)


def test_drain_and_enable_flip_the_backend_state_for_authenticated_users_only(routed):
    api, proxy, *_ = routed
    bare = Api(proxy.http_port)
    assert bare.post("/api/backends/node-a/drain").status_code in (401, 403)
    rsp = api.post("/api/backends/node-a/drain")
    assert rsp.status_code == 200 and rsp.json() == {"id": "node-a", "pool": "main", "enabled": True, "draining": True}
    pools = api.json("/api/pools")
    assert {b["id"]: b["draining"] for b in pools[0]["backends"]} == {"node-a": True, "node-b": False, "node-c": False}
    assert api.post("/api/backends/node-a/enable").json()["draining"] is False
    assert api.post("/api/backends/no-such-node/drain").status_code == 404
