"""A fair share of the front door: one source address cannot hold every association slot
(counted across workers), AllowedSources refuses an address before negotiation, and an
established association with nothing in flight is closed after Network.IdleTimeoutSeconds.
Sources are other loopback addresses (127.0.0.2, ...), each a host of its own."""

from __future__ import annotations

import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from routing.simulators.synthetic import write_study
from tests.harness import send_files, wait_for


def hold(port: int, source: str, count: int) -> list:
    """Open up to ``count`` associations from ``source``; those established stay open."""
    ae = AE(ae_title=f"HOG{source.rsplit('.', 1)[-1]}")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    held = []
    for _ in range(count):
        assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHIQ", bind_address=(source, 0))
        if assoc.is_established:
            held.append(assoc)
    return held


def release(held: list) -> None:
    for assoc in held:
        if assoc.is_established:
            assoc.abort()


def test_hosts_holding_many_associations_cannot_keep_a_modality_out(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]))  # the defaults: 64 in all, a quarter per address
    hogs = []
    try:
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            got = hold(proxy.port, source, 30)
            assert len(got) == 16, f"{source} holds {len(got)} associations"
            hogs += got
        suid, files = write_study(tmp_path / "s", count=2)
        assert [s.status for s in send_files(proxy.port, files)] == [0, 0]
        assert suid in backend.holdings()
    finally:
        release(hogs)
    log = proxy.process.log()
    assert "reason=address-limit" in log and "Network.MaxAssociationsPerAddress" in log


def test_the_per_address_limit_counts_every_worker(cluster):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], Network={"MaxAssociationsPerAddress": 4}),
                          extra_args=["--workers", "2"])
    proxy.worker_pids()
    got = hold(proxy.port, "127.0.0.2", 12)
    try:
        # Two workers admitting one address at the same instant may each pass once.
        assert 4 <= len(got) <= 5, f"{len(got)} associations from one address with a limit of 4"
        assert hold(proxy.port, "127.0.0.3", 1), "another address is let in"
    finally:
        release(got)


def test_allowed_sources_refuses_other_addresses_before_negotiation(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], pool={"AllowedSources": ["127.0.0.2/32", "10.0.0.0/8"]}))
    assert hold(proxy.port, "127.0.0.3", 1) == []
    allowed = hold(proxy.port, "127.0.0.2", 1)
    assert len(allowed) == 1
    release(allowed)
    wait_for(lambda: "AllowedSources" in proxy.process.log(), timeout=10, what="the refusal's log line")
    assert "127.0.0.3 is not in Pools[main].AllowedSources" in proxy.process.log()


@pytest.mark.parametrize("idle", [1.5])
def test_an_idle_association_is_closed_and_a_busy_one_is_not(cluster, tmp_path, idle):
    backend = cluster.backend("node-a", latency_ms=2500)  # a store slower than the idle limit
    proxy = cluster.proxy(cluster.config([backend], Network={"IdleTimeoutSeconds": idle}))
    ae = AE(ae_title="IDLER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ")
    assert assoc.is_established
    _, files = write_study(tmp_path / "s", count=1)
    from pydicom import dcmread

    assert int(assoc.send_c_store(dcmread(files[0])).Status) == 0  # in flight for 2.5 s: not idle
    started = time.monotonic()
    wait_for(lambda: assoc.is_aborted or None, timeout=idle + 5, what="the idle association to be closed")
    assert time.monotonic() - started >= idle - 0.2
    assert "Network.IdleTimeoutSeconds" in proxy.process.log()
