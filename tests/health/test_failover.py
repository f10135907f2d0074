"""A backend whose health endpoint stops answering leaves Tier 2 within the heartbeat
timeout, keeps the studies bound to it, and comes back once it answers again."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from routing.simulators.synthetic import write_study
from tests.harness import send_files, wait_for
from tests.health.helpers import health_row

INTERVAL, TIMEOUT, REFRESH = 1, 3, 1.0


def send_new_study(port: int, directory: Path) -> str:
    suid, files = write_study(directory, count=1)
    assert [s.status for s in send_files(port, files)] == [0]
    return suid


def test_backend_with_a_hung_health_endpoint_leaves_tier2_keeps_its_studies_and_returns(cluster, tmp_path):
    a = cluster.backend("node-a")  # load 0: the one every new study goes to
    b = cluster.backend("node-b", queue_depth=25)  # load 0.5
    proxy = cluster.proxy(cluster.config([a, b], HeartbeatIntervalSeconds=INTERVAL,
                                         HeartbeatTimeoutSeconds=TIMEOUT))
    bound, bound_files = write_study(tmp_path / "bound", count=2)
    assert [s.status for s in send_files(proxy.port, bound_files[:1])] == [0]
    assert bound in a.holdings()

    a.control(health="hang", hang_seconds=60)
    n = 0

    def new_study_goes_to_b() -> dt.datetime | None:
        nonlocal n
        n += 1
        suid = send_new_study(proxy.port, tmp_path / f"during-{n}")
        return dt.datetime.now(dt.UTC) if suid in b.holdings() else None

    left_at = wait_for(new_study_goes_to_b, timeout=TIMEOUT + 10, interval=0.2, what="node-a to leave Tier 2")
    row = wait_for(lambda: (r := health_row("node-a")) and not r.healthy and r, timeout=TIMEOUT + 5,
                   what="node-a's health row to turn unhealthy")
    # Out within the timeout of its last good heartbeat (plus at most one snapshot refresh).
    gone_after = (left_at - row.last_ok_utc).total_seconds()
    print(f"node-a left Tier 2 {gone_after:.2f}s after its last good heartbeat ({n} new studies sent)")
    assert gone_after <= TIMEOUT + REFRESH + 0.75
    assert "timed out" in row.last_error
    # Once out, new studies stay away from it.
    for m in range(3):
        assert send_new_study(proxy.port, tmp_path / f"after-{m}") in b.holdings()

    # The study bound to it follows its binding, unhealthy or not.
    assert [s.status for s in send_files(proxy.port, bound_files[1:])] == [0]
    assert len(a.holdings()[bound]) == 2 and bound not in b.holdings()

    a.control(health="ok")
    recovered = time.monotonic()
    k = 0

    def new_study_goes_to_a() -> bool:
        nonlocal k
        k += 1
        return send_new_study(proxy.port, tmp_path / f"back-{k}") in a.holdings()

    wait_for(new_study_goes_to_a, timeout=INTERVAL + REFRESH + 8, interval=0.2, what="node-a to come back")
    print(f"node-a back in Tier 2 {time.monotonic() - recovered:.2f}s after its endpoint answered again")
    assert health_row("node-a").healthy
