"""runproxy killed around a database outage (what `make chaos` found): the host's binding
journal keeps studies whole and gets every binding written."""

from __future__ import annotations

import signal
import time

import pytest

from routing.simulators.synthetic import write_study
from tests.harness import OwnPostgres, send_files, wait_for


def _route_lines(proxy, suid: str) -> list[str]:
    return [line for line in proxy.process.log().splitlines() if f"study={suid}" in line and "route pool=" in line]


@pytest.fixture
def database(cluster):
    own = OwnPostgres(cluster)
    try:
        yield own
    finally:
        cluster.stop_all()  # runproxy first: the database is dropped under nobody
        own.drop()


def _liveness_proxy(cluster, database, names: str):
    """Liveness-only backends (no load signal: placed round-robin) behind a runproxy on ``database``."""
    backends = [cluster.backend(f"node-{c}") for c in names]
    liveness = [b.config(Health={"Mode": "liveness", "Probe": "tcp"}) for b in backends]
    return backends, cluster.proxy(cluster.config(liveness, HeartbeatTimeoutSeconds=600), extra_env=database.env)


def _kill_and_restart(proxy) -> None:
    proxy.process.signal(signal.SIGKILL)
    proxy.process.proc.wait(timeout=10)
    proxy.process.start()


def test_a_runproxy_restarted_then_cut_from_the_database_keeps_each_study_on_its_backend(cluster, database, tmp_path):
    backends, proxy = _liveness_proxy(cluster, database, "abc")
    # Six studies placed round-robin while the database is up: bound, durably.
    studies = [write_study(tmp_path / f"s{n}", count=2) for n in range(6)]
    for _, files in studies:
        assert send_files(proxy.port, files[:1])[0].status == 0
    placed = {suid: next(b.id for b in backends if suid in b.holdings()) for suid, _ in studies}
    assert len(set(placed.values())) == 3

    # runproxy dies and comes back with an empty hot cache; then the database goes away.
    _kill_and_restart(proxy)
    database.down()
    for suid, files in studies:
        assert send_files(proxy.port, files[1:])[0].status == 0
        # Found in the journal, not hashed afresh (the hash would split about 2 in 3).
        assert "reason=affinity-hit" in _route_lines(proxy, suid)[-1]
    for suid, _ in studies:
        assert [b.id for b in backends if suid in b.holdings()] == [placed[suid]]
        assert len(next(b for b in backends if b.id == placed[suid]).holdings()[suid]) == 2


def test_bindings_decided_during_an_outage_are_written_by_the_next_runproxy_if_this_one_is_killed(
        cluster, database, tmp_path):
    backends, proxy = _liveness_proxy(cluster, database, "ab")
    database.down()
    studies = [write_study(tmp_path / f"s{n}", count=1) for n in range(4)]
    for suid, files in studies:
        assert send_files(proxy.port, files)[0].status == 0
        assert "reason=rendezvous" in _route_lines(proxy, suid)[-1]
    holders = {suid: next(b.id for b in backends if suid in b.holdings()) for suid, _ in studies}

    # Killed before the database is back: what it held in memory is gone, the journal is not.
    proxy.process.signal(signal.SIGKILL)
    proxy.process.proc.wait(timeout=10)
    database.up()
    proxy.process.start()
    assert "4 bindings decided during a database outage are not yet written" in proxy.process.log()
    wait_for(lambda: dict(database.rows("SELECT study_uid, backend_id FROM affinity_binding")) == holders,
             timeout=20, what="the journal's bindings to be written")


def test_a_database_outage_is_logged_when_it_starts_and_when_it_ends_not_at_every_try(cluster, database):
    _, proxy = _liveness_proxy(cluster, database, "a")
    database.down()
    wait_for(lambda: "snapshot refresh failed, routing on the last one:" in proxy.process.log(), timeout=20,
             what="the outage to be noticed")
    time.sleep(4)  # about four more refreshes fail meanwhile
    database.up()
    wait_for(lambda: "snapshot refresh failed, routing on the last one: over after" in proxy.process.log(),
             timeout=20, what="the end of the outage to be logged")
    log = proxy.process.log()
    assert log.count("snapshot refresh failed, routing on the last one:") == 2  # it started; it ended
    assert log.count("could not publish proxy status:") <= 2
