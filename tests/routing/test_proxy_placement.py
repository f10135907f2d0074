"""Studies stay whole on one backend across associations (real associations on loopback)."""

from __future__ import annotations

import signal
import threading

import pytest

from routing.simulators.synthetic import write_study
from tests.harness import binding_of, placement, send_files, set_health, wait_refreshed

pytestmark = pytest.mark.postgres


def test_one_study_over_three_associations_interleaved_with_two_others_stays_whole(cluster, tmp_path):
    backends = [cluster.backend(f"node-{c}") for c in "abc"]
    proxy = cluster.proxy(cluster.config(backends))
    set_health(backends)
    main, main_files = write_study(tmp_path / "main", count=9)
    other1, other1_files = write_study(tmp_path / "o1", count=4)
    other2, other2_files = write_study(tmp_path / "o2", count=4)

    # Three associations each carry a third of the main study, interleaved with the others.
    for n in range(3):
        files = main_files[n * 3:(n + 1) * 3]
        batch = [files[0], other1_files[n], files[1], other2_files[n], files[2]]
        assert all(s.status == 0 for s in send_files(proxy.port, batch))
    assert all(s.status == 0 for s in send_files(proxy.port, [other1_files[3], other2_files[3]]))

    where = placement(backends)
    for suid, count in ((main, 9), (other1, 4), (other2, 4)):
        assert len(where[suid]) == 1, f"study {suid} split over {where[suid]}"
        holder = next(b for b in backends if b.id in where[suid])
        assert len(holder.holdings()[suid]) == count



def test_killed_proxy_restarts_and_the_rest_of_the_study_and_a_late_resend_follow_the_binding(cluster, tmp_path):
    backends = [cluster.backend(f"node-{c}") for c in "abc"]
    config = cluster.config(backends, HeartbeatTimeoutSeconds=600)
    proxy = cluster.proxy(config)
    set_health(backends)
    wait_refreshed()
    suid, files = write_study(tmp_path / "s", count=10)
    assert all(s.status == 0 for s in send_files(proxy.port, files[:4]))
    first = binding_of(suid)
    assert first is not None

    proxy.process.signal(signal.SIGKILL)
    proxy.process.proc.wait(timeout=10)
    # After the restart the original backend looks busiest: Tier 2 would pick another one.
    for b in backends:
        load = 0.9 if b.id == first else 0.0
        b.control(queue_depth=45 if b.id == first else 0)
        set_health([b], load=load)
    proxy.restart()
    assert all(s.status == 0 for s in send_files(proxy.port, files[4:]))
    # A re-send "a day later", on a new association, still inside the 96 h window.
    assert all(s.status == 0 for s in send_files(proxy.port, files[:2]))

    where = placement(backends)
    assert where[suid] == {first}
    holder = next(b for b in backends if b.id == first)
    assert len(holder.holdings()[suid]) == 10


def test_two_proxies_on_one_database_agree_on_every_new_study_they_see_at_once(cluster, tmp_path, db_kind):
    """Two runproxy processes get the first instances of the same 20 new studies at the
    same moment. Their weighted round-robins are out of step on purpose, so they would
    choose differently; the race-free binding makes both follow one backend."""
    backends = [cluster.backend(f"node-{c}") for c in "abc"]
    liveness = [b.config(Health={"Mode": "liveness", "Probe": "tcp"}) for b in backends]
    # 20 senders at once on one address per proxy: as a router in front of many modalities.
    one_address = {"MaxAssociationsPerAddress": 64}
    config_a = cluster.config(liveness, HeartbeatTimeoutSeconds=600, Network=one_address)
    config_b = cluster.config(liveness, HeartbeatTimeoutSeconds=600, Network=one_address)
    proxy_a = cluster.proxy(config_a, name="proxy-a")
    proxy_b = cluster.proxy(config_b, name="proxy-b")
    set_health(backends, load=None)
    wait_refreshed()
    # Step proxy A's round-robin one ahead of B's.
    _, warm = write_study(tmp_path / "warm", count=1)
    assert send_files(proxy_a.port, warm)[0].status == 0

    studies = [write_study(tmp_path / f"s{n}", count=2) for n in range(20)]
    barrier = threading.Barrier(40)
    results: list = []

    def send(port: int, path):
        barrier.wait(timeout=30)
        results.extend(send_files(port, [path]))

    threads = [threading.Thread(target=send, args=(port, files[i]))
               for _, files in studies for port, i in ((proxy_a.port, 0), (proxy_b.port, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 40 and all(r.status == 0 for r in results)

    where = placement(backends)
    for suid, _ in studies:
        assert len(where[suid]) == 1, f"{db_kind}: study {suid} split over {where[suid]}"
        assert binding_of(suid) in where[suid]
