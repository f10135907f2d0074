"""Draining through the API: no new studies for the backend, its bound studies still reach it."""

from __future__ import annotations

import time

from routing.simulators.synthetic import write_study
from routing.worker import REFRESH_SECONDS
from tests.admin.support import Api, api_user, healthy
from tests.harness import placement, send_files


def _router_sees_the_change() -> None:
    # runproxy reloads backend state from the database every REFRESH_SECONDS and offers
    # nothing observable when it has; two periods and a margin cover one full refresh.
    time.sleep(REFRESH_SECONDS * 2 + 0.5)


def test_a_drained_backend_takes_no_new_studies_but_keeps_its_bound_ones(cluster, tmp_path):
    # node-a reports itself idle and node-b half busy: without draining, every new study goes to node-a.
    a = cluster.backend("node-a")
    b = cluster.backend("node-b", queue_depth=25)
    proxy = cluster.proxy(cluster.config([a, b], HeartbeatTimeoutSeconds=600), http=True)
    healthy([a, b], loads={"node-a": 0.0, "node-b": 0.5})
    api = Api(proxy.http_port, api_user().token)

    bound, bound_files = write_study(tmp_path / "bound", count=4)
    assert [s.status for s in send_files(proxy.port, bound_files[:2])] == [0, 0]
    assert placement([a, b])[bound] == {"node-a"}

    rsp = api.post("/api/backends/node-a/drain")
    assert rsp.status_code == 200 and rsp.json()["draining"] is True
    _router_sees_the_change()

    new = [write_study(tmp_path / f"new{n}", count=2) for n in range(3)]
    for _, files in new:
        assert [s.status for s in send_files(proxy.port, files)] == [0, 0]
    # The rest of the bound study, late, on a new association.
    assert [s.status for s in send_files(proxy.port, bound_files[2:])] == [0, 0]

    where = placement([a, b])
    assert where[bound] == {"node-a"} and len(a.holdings()[bound]) == 4
    assert all(where[suid] == {"node-b"} for suid, _ in new)

    decisions = api.wait_counters(lambda s: s["counters"]["decisions"] == 5)
    activity = api.json("/api/activity")["results"]
    late = next(d for d in activity if d["study_uid"] == bound)  # newest first: the late re-send
    assert (late["backend"], late["tier"]) == ("node-a", "affinity-hit")
    assert decisions["backends"][0]["draining"] is True

    assert api.post("/api/backends/node-a/enable").json()["draining"] is False
    _router_sees_the_change()
    again, files = write_study(tmp_path / "again", count=1)
    assert [s.status for s in send_files(proxy.port, files)] == [0]
    assert placement([a, b])[again] == {"node-a"}
