"""Storage commitment as a drop-in for a PACS VIP sees it, with real Orthancs only: a pool of
two (node-a, node-b), an outside Orthanc acting as a modality that asks for commitment
(REQ), and another acting as an archive that node-a asks directly (ARCH).

The Orthancs are set up as a site with SynthIQ at its VIP address would be: the backends'
entry for REQ points at the pool's listener (their reports come through SynthIQ), REQ knows
SynthIQ by the pool's AE title, and ARCH knows node-a's AE title at SynthIQ's address."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from routing.simulators.synthetic import write_study
from tests.harness import Cluster, clean_database, send_files, start_orthanc, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    clean_database()
    cluster = Cluster(tmp=tmp_path_factory.mktemp("drop-in"), env=dict(os.environ))
    try:
        orthancs = {name: start_orthanc(cluster, name=f"orthanc-{name.lower()}", DicomAet=name)
                    for name in ("ORTHANCA", "ORTHANCB", "REQ", "ARCH")}
        a, b, req, arch = orthancs.values()
        backends = [{"Id": f"node-{o.ae_title[-1].lower()}", "AeTitle": o.ae_title, "Host": "127.0.0.1",
                     "Port": o.dicom_port, "Health": {"Mode": "liveness", "Probe": "echo"}} for o in (a, b)]
        requesters = [{"AeTitle": "REQ", "Host": "127.0.0.1", "Port": req.dicom_port}]
        proxy = cluster.proxy(cluster.config(backends, HeartbeatTimeoutSeconds=600,
                                             pool={"CommitmentRequesters": requesters}))
        for node in (a, b):
            _modality(node, "req", "REQ", proxy.port)  # its reports to REQ go through SynthIQ
            _modality(node, "arch", "ARCH", arch.dicom_port)
            _modality(node, "storescu", "STORESCU", 104)
        _modality(req, "synthiq", "SYNTHIQ", proxy.port)
        _modality(arch, "a", "ORTHANCA", proxy.port)  # node-a, as the archive knows it: at the VIP
        yield cluster, proxy, orthancs
    finally:
        cluster.stop_all()


def _modality(orthanc, name: str, ae_title: str, port: int) -> None:
    orthanc.rest("PUT", f"/modalities/{name}", json={"AET": ae_title, "Host": "127.0.0.1", "Port": port})


def _instances(paths: list[Path]) -> list[dict[str, str]]:
    out = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        out.append({"SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID)})
    return out


def _store_directly(orthanc, paths: list[Path]) -> None:
    assert [s.status for s in send_files(orthanc.dicom_port, paths, called_ae=orthanc.ae_title,
                                         calling_ae="STORESCU")] == [0] * len(paths)


def _commit(requester, modality: str, paths: list[Path]) -> dict:
    """Ask for storage commitment through Orthanc's REST API; its record once not Pending."""
    job = requester.rest("POST", f"/modalities/{modality}/storage-commitment",
                         json={"DicomInstances": _instances(paths), "Timeout": 30})
    record: dict = {}

    def answered() -> bool:
        record.update(requester.rest("GET", f"/storage-commitment/{job['ID']}"))
        return record["Status"] != "Pending"

    wait_for(answered, timeout=60, what=f"the storage commitment report at {requester.ae_title}")
    return record


def _uids(items: list[dict]) -> set[str]:
    return {i["SOPInstanceUID"] for i in items}


def test_commitment_for_an_instance_stored_around_synthiq_ends_in_success(site, tmp_path):
    """node-a received the instance directly (SynthIQ never relayed it): located by C-FIND,
    the N-ACTION goes to node-a, and its report comes back through SynthIQ to REQ."""
    _, proxy, orthancs = site
    _, files = write_study(tmp_path / "direct", count=1)
    _store_directly(orthancs["ORTHANCA"], files)
    record = _commit(orthancs["REQ"], "synthiq", files)
    assert record["Status"] == "Success", record
    assert _uids(record["Success"]) == {i["SOPInstanceUID"] for i in _instances(files)}
    assert "located=1 held-by-none=0 backends=node-a:1" in proxy.process.log()
    # REQ has the report before SynthIQ has its answer (and logs it).
    wait_for(lambda: "calling_ae=ORTHANCA" in proxy.process.log() and "to REQ, answered 0x0000"
             in proxy.process.log(), timeout=10, what="the relayed report's line")


def test_a_commitment_spread_over_two_backends_and_nowhere_ends_in_one_merged_report(site, tmp_path):
    _, proxy, orthancs = site
    _, files = write_study(tmp_path / "spread", count=3)
    on_a, on_b, on_none = files
    _store_directly(orthancs["ORTHANCA"], [on_a])
    _store_directly(orthancs["ORTHANCB"], [on_b])
    before = proxy.process.log().count("report (")
    record = _commit(orthancs["REQ"], "synthiq", files)
    assert record["Status"] == "Failure", record
    [a, b, none] = _instances(files)
    assert _uids(record["Success"]) == {a["SOPInstanceUID"], b["SOPInstanceUID"]}
    assert _uids(record["Failures"]) == {none["SOPInstanceUID"]}
    wait_for(lambda: "to REQ answered 0x0000" in proxy.process.log(), timeout=10, what="the report's line")
    time.sleep(1)  # a second report would come right after the first
    log = proxy.process.log()
    assert log.count("report (") - before == 1
    assert "report (2 committed, 1 failed) to REQ answered 0x0000" in log
    assert "located=2 held-by-none=1 backends=node-a:1,node-b:1" in log


def test_an_archives_report_to_a_backend_comes_through_synthiq(site, tmp_path):
    """node-a asks ARCH directly; ARCH reports to node-a's AE title at SynthIQ's address."""
    _, proxy, orthancs = site
    _, files = write_study(tmp_path / "archived", count=2)
    _store_directly(orthancs["ORTHANCA"], files)
    _store_directly(orthancs["ARCH"], files)
    record = _commit(orthancs["ORTHANCA"], "arch", files)
    assert record["Status"] == "Success", record
    assert _uids(record["Success"]) == {i["SOPInstanceUID"] for i in _instances(files)}
    assert "calling_ae=ARCH" in proxy.process.log() and "relayed to backend node-a" in proxy.process.log()
    assert "reason=called-ae" not in proxy.process.log()


def test_a_report_for_instances_no_backend_holds_is_answered_0110_and_logged(site, tmp_path):
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    _, proxy, _ = site
    _, files = write_study(tmp_path / "nowhere", count=1)
    [instance] = _instances(files)
    info = Dataset()
    info.TransactionUID = "2.25.4242"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = instance["SOPClassUID"], instance["SOPInstanceUID"]
    info.ReferencedSOPSequence = [item]
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ",
                         ext_neg=[build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)])
    assert assoc.is_established
    try:
        rsp, _ = assoc.send_n_event_report(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    finally:
        assoc.release()
    assert int(rsp.Status) == 0x0110
    assert str(rsp.get("ErrorComment", "")).startswith("no backend of pool main holds the instances")
    assert "transaction=2.25.4242 instances=1 failed=0: to -, answered 0x0110 no backend of pool main holds the " \
        "instances, and called AE title 'SYNTHIQ' is no backend's" in proxy.process.log()
