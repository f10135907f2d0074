"""Byte-exact forwarding and status pass-through, over real associations."""

from __future__ import annotations

import shutil

import pytest
import requests
from pydicom.data import get_testdata_file

from routing.simulators.synthetic import write_study
from tests.harness import binding_of, dataset_digest, free_port, send_files, set_health, wait_refreshed

SAMPLES = {
    "explicit-le": "CT_small.dcm",
    "implicit-le": "MR_small_implicit.dcm",
    "deflated": "image_dfl.dcm",
    "jpeg-baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg2000": "JPEG2000.dcm",
}


@pytest.fixture
def one_backend_proxy(cluster):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], HeartbeatTimeoutSeconds=600))
    return backend, proxy


@pytest.mark.parametrize("syntax", SAMPLES)
def test_the_backend_receives_the_data_set_bytes_the_modality_sent(one_backend_proxy, tmp_path, syntax):
    backend, proxy = one_backend_proxy
    path = tmp_path / SAMPLES[syntax]
    shutil.copy(get_testdata_file(SAMPLES[syntax]), path)
    [sent] = send_files(proxy.port, [path])
    assert sent.status == 0, sent.comment
    held = {sop: digest for study in backend.holdings().values() for sop, digest in study.items()}
    assert list(held.values()) == [dataset_digest(path)]


@pytest.mark.parametrize(
    "status, comment",
    [(0xA700, "disk quota exceeded on node"), (0xB000, "coerced some elements"), (0xC000, "cannot parse")],
)
def test_the_backend_status_and_error_comment_reach_the_sender_verbatim(one_backend_proxy, tmp_path, status, comment):
    backend, proxy = one_backend_proxy
    backend.control(status=f"0x{status:04X}", error_comment=comment)
    _, files = write_study(tmp_path, count=1)
    [sent] = send_files(proxy.port, files)
    assert (sent.status, sent.comment) == (status, comment)


@pytest.mark.postgres  # it asserts what the database holds: run on both
def test_bound_backend_down_fails_the_instance_and_the_study_is_not_moved(cluster, tmp_path):
    backends = [cluster.backend(f"node-{c}") for c in "abc"]
    # No hold: the bound backend stays down, and tests/routing/test_hold.py covers the wait.
    proxy = cluster.proxy(cluster.config(backends, HeartbeatTimeoutSeconds=600,
                                         Network={"BoundBackendHoldSeconds": 0}))
    set_health(backends)
    wait_refreshed()
    suid, files = write_study(tmp_path / "s", count=4)
    assert all(s.status == 0 for s in send_files(proxy.port, files[:2]))
    bound = binding_of(suid)
    dead = next(b for b in backends if b.id == bound)
    dead.process.stop()

    # The bound backend is down: each remaining instance fails (never 0x0000) ...
    results = send_files(proxy.port, files[2:])
    assert [r.status for r in results] == [0xA701, 0xA701]
    assert all(bound in r.comment for r in results)
    # ... and the study is not moved to a healthy backend.
    assert binding_of(suid) == bound
    assert all(suid not in b.holdings() for b in backends if b is not dead)

    # A new study arriving while that backend is down (heartbeat says so) goes elsewhere.
    set_health([dead], healthy=False)
    wait_refreshed()
    new_suid, new_files = write_study(tmp_path / "n", count=1)
    assert send_files(proxy.port, new_files)[0].status == 0
    assert binding_of(new_suid) not in (None, bound)


@pytest.mark.postgres  # it asserts what the database holds: run on both
def test_backend_abort_mid_transfer_is_a_failure_and_the_study_stays_bound(one_backend_proxy, tmp_path):
    backend, proxy = one_backend_proxy
    suid, files = write_study(tmp_path, count=3)
    assert send_files(proxy.port, files[:1])[0].status == 0
    backend.control(abort=True)
    results = send_files(proxy.port, files[1:])
    assert [r.status for r in results] == [0xA702, 0xA702]
    backend.control(abort=False)
    # The pooled outbound association is re-established for the next instance.
    assert send_files(proxy.port, files[1:])[0].status == 0
    assert binding_of(suid) == "node-a"


def test_a_data_set_without_study_uid_is_refused_with_a_precise_status(one_backend_proxy, tmp_path):
    from pydicom import dcmread

    backend, proxy = one_backend_proxy
    _, [path] = write_study(tmp_path, count=1)
    ds = dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)
    [sent] = send_files(proxy.port, [path])
    assert sent.status == 0xC000
    assert "Study Instance UID" in sent.comment
    assert backend.holdings() == {}
    assert "Study Instance UID (0020,000D) missing" in proxy.process.log()


def test_health_endpoint_of_the_simulated_backend_serves_the_native_contract(one_backend_proxy):
    backend, _ = one_backend_proxy
    body = requests.get(f"{backend.url}/api/health", timeout=5).json()
    assert body["status"] == "ok"
    assert set(body["queue"]) == {"received", "hold", "processing", "failed"}
    assert body["capacity"] > 0



def test_an_instance_the_backend_cannot_take_gets_a_clear_failure_not_a_hang(cluster, tmp_path):
    """DCMTK's storescp accepts only uncompressed syntaxes by default: a JPEG instance
    accepted inbound cannot be forwarded over a mirrored context."""
    proxy = _proxy_in_front_of_storescp(cluster)
    jpeg = tmp_path / "jpeg.dcm"
    shutil.copy(get_testdata_file(SAMPLES["jpeg-baseline"]), jpeg)
    [sent] = send_files(proxy.port, [jpeg])
    assert sent.status == 0x0122
    assert "pacs" in sent.comment
    assert "backend pacs refused SOP class/syntax" in proxy.process.log()


def test_an_inbound_abort_aborts_the_outbound_association(one_backend_proxy, tmp_path):
    from tests.harness import wait_for

    backend, proxy = one_backend_proxy
    _, files = write_study(tmp_path, count=3)

    def counts() -> dict[str, int]:
        return requests.get(f"{backend.url}/api/associations", timeout=5).json()

    before = counts()  # the start-up transfer-syntax probe released one association
    send_files(proxy.port, files, abort_after=2)
    wait_for(lambda: counts()["aborted"] == before["aborted"] + 1, timeout=10, what="the backend to see the abort")
    assert counts()["released"] == before["released"]
    send_files(proxy.port, files[2:])
    wait_for(lambda: counts()["released"] == before["released"] + 1, timeout=10, what="a release to follow a release")


def test_a_modality_preferring_jpeg_2000_is_steered_to_a_syntax_the_backends_accept(cluster, tmp_path):
    """storescp (DCMTK) stores only uncompressed syntaxes; the modality proposes JPEG 2000
    first. SynthIQ learnt what its backends accept and accepts Explicit VR LE instead."""

    from pydicom.uid import JPEG2000, ExplicitVRLittleEndian
    from pynetdicom import AE, build_context

    proxy = _proxy_in_front_of_storescp(cluster)
    _, [path] = write_study(tmp_path / "s", count=1)
    ae = AE(ae_title="MODALITY")
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ",
                         contexts=[build_context("1.2.840.10008.5.1.4.1.1.2", [JPEG2000, ExplicitVRLittleEndian])])
    try:
        assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [ExplicitVRLittleEndian]
        from pydicom import dcmread

        assert assoc.send_c_store(dcmread(path)).Status == 0x0000
    finally:
        assoc.release()


def test_synthiq_chooses_among_proposed_syntaxes_as_its_backends_would(cluster):
    """Orthanc (DCMTK) takes uncompressed over a requestor's first choice of JPEG lossless;
    the pynetdicom backend takes the requestor's first choice. The start-up probe learns
    each, and SynthIQ accepts what a direct association to that backend would have."""
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1
    from pynetdicom import AE, build_context

    from routing.relay.outbound import BackendAddress
    from routing.syntax_probe import probe_backend
    from tests.harness import start_orthanc

    orthanc = start_orthanc(cluster)
    node = cluster.backend("node-a")
    learnt = {name: probe_backend(calling_ae="SYNTHIQ", backend=BackendAddress(name, ae, "127.0.0.1", port))
              for name, ae, port in [("orthanc", orthanc.ae_title, orthanc.dicom_port),
                                     ("node-a", node.ae_title, node.port)]}
    assert learnt["orthanc"].wins[ExplicitVRLittleEndian] > learnt["orthanc"].wins.get(JPEGLosslessSV1, 0)
    assert learnt["node-a"].wins == {}  # pynetdicom: the requestor's order
    orthanc_backend = {"Id": "orthanc", "AeTitle": orthanc.ae_title, "Host": "127.0.0.1",
                       "Port": orthanc.dicom_port, "Health": {"Mode": "liveness", "Probe": "tcp"}}
    config = cluster.config([orthanc_backend])
    config["Pools"].append({"Id": "nodes", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": free_port(),
                            "Backends": [node.config()]})
    proxy = cluster.proxy(config)
    proposed = [build_context("1.2.840.10008.5.1.4.1.1.7", [JPEGLosslessSV1, ExplicitVRLittleEndian])]
    chosen = {}
    for name, port in [("orthanc direct", orthanc.dicom_port), ("orthanc via SynthIQ", proxy.port),
                       ("node-a direct", node.port), ("node-a via SynthIQ", config["Pools"][1]["Port"])]:
        assoc = AE(ae_title="MODALITY").associate("127.0.0.1", port, contexts=proposed, ae_title="SYNTHIQ")
        chosen[name] = [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts]
        assoc.release()
    assert chosen == {"orthanc direct": [ExplicitVRLittleEndian], "orthanc via SynthIQ": [ExplicitVRLittleEndian],
                      "node-a direct": [JPEGLosslessSV1], "node-a via SynthIQ": [JPEGLosslessSV1]}


def _proxy_in_front_of_storescp(cluster):
    """A pool whose one backend is DCMTK's storescp (uncompressed syntaxes only)."""
    from tests.harness import start_storescp

    port, _ = start_storescp(cluster, ae_title="PACS")
    return cluster.proxy(cluster.config([{"Id": "pacs", "AeTitle": "PACS", "Host": "127.0.0.1", "Port": port,
                                          "Health": {"Mode": "liveness", "Probe": "tcp"}}]))


def test_message_id_priority_move_originator_and_calling_ae_reach_the_backend(one_backend_proxy, tmp_path):
    from pydicom import dcmread
    from pynetdicom import AE, build_context

    backend, proxy = one_backend_proxy
    _, [path] = write_study(tmp_path, count=1)
    ds = dcmread(path)
    ae = AE(ae_title="CT01")
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ",
                         contexts=[build_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)])
    try:
        rsp = assoc.send_c_store(ds, msg_id=4242, priority=1, originator_aet="QRSCP", originator_id=77)
    finally:
        assoc.release()
    assert rsp.Status == 0
    [seen] = requests.get(f"{backend.url}/api/requests", timeout=5).json()
    assert seen == {"sop_instance_uid": ds.SOPInstanceUID, "message_id": 4242, "priority": 1,
                    "move_originator_ae": "QRSCP", "move_originator_id": 77, "calling_ae": "CT01"}


def test_nothing_is_spooled_an_instance_larger_than_any_file_runproxy_may_write_is_relayed(cluster, tmp_path):
    """The data plane is cut-through: runproxy may write no file over 2 MB (RLIMIT_FSIZE;
    past it a write fails with EFBIG, as on a full disk), and a 2.9 MB instance still goes
    through byte-exact. (This replaces the store-then-forward build's full-spool test:
    there is no spool left to fill.)"""
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]), max_file_bytes=2 * 1024 * 1024)
    _, big = write_study(tmp_path / "big", count=1, rows=1200, columns=1200)
    assert big[0].stat().st_size > 2_800_000
    [sent] = send_files(proxy.port, big)
    assert sent.status == 0x0000
    held = [digest for study in backend.holdings().values() for digest in study.values()]
    assert held == [dataset_digest(big[0])]


def test_a_backend_down_at_start_is_asked_what_it_accepts_when_it_comes_back(cluster, tmp_path):
    from pydicom import dcmread
    from pydicom.uid import JPEG2000, ExplicitVRLittleEndian
    from pynetdicom import AE, build_context

    from tests.harness import free_port, start_storescp, wait_for

    port = free_port()
    proxy = cluster.proxy(cluster.config([{"Id": "pacs", "AeTitle": "PACS", "Host": "127.0.0.1", "Port": port,
                                           "Health": {"Mode": "liveness", "Probe": "tcp"}}]))
    assert "transfer syntaxes accepted by its backends: unknown" in proxy.process.log()
    start_storescp(cluster, ae_title="PACS", port=port)
    wait_for(lambda: "backend pacs is healthy again: asking what it accepts" in proxy.process.log(), timeout=15,
             what="runproxy to probe the backend that came back")
    wait_for(lambda: "transfer syntaxes accepted by its backends: {" in proxy.process.log(), timeout=15,
             what="the probe's answer")
    _, [path] = write_study(tmp_path / "s", count=1)
    ae = AE(ae_title="MODALITY")
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ",
                         contexts=[build_context("1.2.840.10008.5.1.4.1.1.2", [JPEG2000, ExplicitVRLittleEndian])])
    try:
        assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [ExplicitVRLittleEndian]
        assert assoc.send_c_store(dcmread(path)).Status == 0x0000
    finally:
        assoc.release()
