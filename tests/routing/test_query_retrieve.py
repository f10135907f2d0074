"""Query, retrieve and storage commitment through SynthIQ, routed to the node that holds
the study: three real Orthanc backends, DCMTK's findscu / movescu / getscu / storescp,
pynetdicom as the commitment SCU and as a commitment SCP that reports on the same
association, and a slow pynetdicom C-FIND SCP for C-CANCEL."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
)

from routing.simulators.synthetic import write_study
from tests.harness import (
    Cluster,
    binding_of,
    clean_database,
    free_port,
    require_tool,
    send_files,
    start_orthanc,
    start_storescp,
    wait_for,
)

pytestmark = pytest.mark.slow
NODES = ("a", "b", "c")


def _orthanc_modalities(dest_port: int, commit_port: int) -> dict:
    """What each Orthanc must know (it drops an association from an AE it does not list):
    the query/retrieve AEs, the move destination and the commitment SCU's reply address."""
    return {"findscu": ["FINDSCU", "127.0.0.1", 104], "movescu": ["MOVESCU", "127.0.0.1", 104],
            "getscu": ["GETSCU", "127.0.0.1", 104], "storescp": ["STORESCP", "127.0.0.1", dest_port],
            "commitscu": ["COMMITSCU", "127.0.0.1", commit_port], "storescu": ["STORESCU", "127.0.0.1", 104]}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Three Orthancs behind runproxy; four studies stored through it; a fifth stored on
    node-a and node-b directly (a split study, as an L4 balancer would leave it)."""
    clean_database()
    cluster = Cluster(tmp=tmp_path_factory.mktemp("qr"), env=dict(os.environ))
    try:
        dest_port, commit_port = free_port(), free_port()
        orthancs = {n: start_orthanc(cluster, name=f"orthanc-{n}", DicomAet=f"ORTHANC{n.upper()}",
                                     DicomModalities=_orthanc_modalities(dest_port, commit_port))
                    for n in NODES}
        backends = [{"Id": f"node-{n}", "AeTitle": o.ae_title, "Host": "127.0.0.1", "Port": o.dicom_port,
                     "Health": {"Mode": "liveness", "Probe": "echo"}} for n, o in orthancs.items()]
        proxy = cluster.proxy(cluster.config(backends, HeartbeatTimeoutSeconds=600))
        studies = {}
        for n in range(4):
            suid, files = write_study(cluster.tmp / f"s{n}", count=3, patient_id=f"QR{n}")
            assert [s.status for s in send_files(proxy.port, files, calling_ae="STORESCU")] == [0, 0, 0]
            studies[suid] = files
        split_suid, split_files = write_study(cluster.tmp / "split", count=2, patient_id="SPLIT")
        for n in ("a", "b"):
            assert send_files(orthancs[n].dicom_port, split_files, called_ae=orthancs[n].ae_title,
                              calling_ae="STORESCU")[0].status == 0
        yield cluster, proxy, orthancs, studies, split_suid, dest_port, commit_port
    finally:
        cluster.stop_all()


def _orthanc_studies(orthanc) -> set[str]:
    ids = requests.get(f"{orthanc.url}/studies", timeout=10).json()
    return {requests.get(f"{orthanc.url}/studies/{i}", timeout=10).json()["MainDicomTags"]["StudyInstanceUID"]
            for i in ids}


def _findscu(port: int, cwd: Path, *keys: str) -> tuple[subprocess.CompletedProcess, list[Dataset]]:
    exe = require_tool("findscu", "dcmtk")
    cwd.mkdir(parents=True, exist_ok=True)
    args = [exe, "-v", "-S", "-X", "-aet", "FINDSCU", "-aec", "SYNTHIQ", "-k", "QueryRetrieveLevel=STUDY"]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run([*args, "127.0.0.1", str(port)], cwd=cwd, capture_output=True, text=True, timeout=120)
    return result, [dcmread(p) for p in sorted(cwd.glob("rsp*.dcm"))]


def test_a_study_level_find_naming_a_bound_study_asks_its_backend_only(pool, tmp_path):
    _, proxy, orthancs, studies, _, _, _ = pool
    suid = next(iter(studies))
    bound = binding_of(suid)
    result, responses = _findscu(proxy.port, tmp_path, f"StudyInstanceUID={suid}", "PatientID")
    assert result.returncode == 0, result.stderr
    assert [str(r.StudyInstanceUID) for r in responses] == [suid]
    log = proxy.process.log()
    assert f"C-FIND pool=main calling_ae=FINDSCU source_ip=127.0.0.1 level=STUDY study={suid} backends={bound} " \
           f"reason=affinity-hit" in log
    assert suid in _orthanc_studies(orthancs[bound[-1]])


def test_a_find_without_a_study_gets_every_study_of_the_pool_once(pool, tmp_path):
    _, proxy, orthancs, studies, split_suid, _, _ = pool
    result, responses = _findscu(proxy.port, tmp_path, "StudyInstanceUID", "PatientID")
    assert result.returncode == 0, result.stderr
    found = [str(r.StudyInstanceUID) for r in responses]
    assert sorted(found) == sorted([*studies, split_suid])  # the split study once, not twice
    assert "reason=fan-out" in proxy.process.log()
    # No binding was created by the query.
    assert binding_of(split_suid) is None
    # Counted by service, as /api/status and /metrics show it.
    import datetime as dt

    from routing.operator.selectors import status_snapshot

    wait_for(lambda: status_snapshot(now=dt.datetime.now(dt.UTC))["counters"]["operations"].get("C-FIND", {})
             .get("success", 0) >= 2, timeout=10, what="the C-FINDs to be counted")


def test_movescu_of_a_study_delivers_every_instance_to_the_destination(pool, tmp_path):
    cluster, proxy, _, studies, _, dest_port, _ = pool
    start_storescp(cluster, name="dest", ae_title="STORESCP", port=dest_port)
    out = cluster.tmp / "dest"
    suid, files = list(studies.items())[1]
    exe = require_tool("movescu", "dcmtk")
    result = subprocess.run([exe, "-S", "-aet", "MOVESCU", "-aec", "SYNTHIQ", "-aem", "STORESCP",
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={suid}",
                             "127.0.0.1", str(proxy.port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    received = wait_for(lambda: (lambda fs: fs if len(fs) == len(files) else None)(list(out.iterdir())),
                        timeout=20, what="storescp to receive the study")
    assert {dcmread(p).SOPInstanceUID for p in received} == {dcmread(p).SOPInstanceUID for p in files}
    assert f"C-MOVE pool=main calling_ae=MOVESCU source_ip=127.0.0.1 level=STUDY study={suid}" in proxy.process.log()


def test_getscu_receives_every_instance_of_a_study_on_its_own_association(pool, tmp_path):
    _, proxy, _, studies, _, _, _ = pool
    suid, files = list(studies.items())[2]
    exe = require_tool("getscu", "dcmtk")
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run([exe, "-S", "-aet", "GETSCU", "-aec", "SYNTHIQ", "-od", str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={suid}",
                             "127.0.0.1", str(proxy.port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    got = list(out.iterdir())
    assert {dcmread(p).SOPInstanceUID for p in got} == {dcmread(p).SOPInstanceUID for p in files}


def test_a_retrieve_of_a_study_never_seen_goes_to_the_backend_a_find_finds_it_on(pool, tmp_path):
    _, proxy, orthancs, _, split_suid, _, _ = pool
    unseen_suid, files = write_study(tmp_path / "unseen", count=2, patient_id="UNSEEN")
    assert send_files(orthancs["c"].dicom_port, files, called_ae=orthancs["c"].ae_title,
                      calling_ae="STORESCU")[0].status == 0
    exe = require_tool("getscu", "dcmtk")
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run([exe, "-S", "-aet", "GETSCU", "-aec", "SYNTHIQ", "-od", str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={unseen_suid}",
                             "127.0.0.1", str(proxy.port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(out.iterdir())) == 2
    assert f"study={unseen_suid} backends=node-c reason=located" in proxy.process.log()
    assert binding_of(unseen_suid) is None


class CommitmentScu:
    """A storage commitment SCU (pynetdicom): N-ACTION through SynthIQ; it takes the
    N-EVENT-REPORT on the same association or on a new one to its own listener."""

    def __init__(self, listen_port: int):
        self.reports: list[Dataset] = []
        self.ae = AE(ae_title="COMMITSCU")
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.ae.network_timeout = self.ae.acse_timeout = self.ae.dimse_timeout = 30
        handlers = [(evt.EVT_N_EVENT_REPORT, self._report)]
        self.server = self.ae.start_server(("127.0.0.1", listen_port), block=False, evt_handlers=handlers)
        self.handlers = handlers

    def _report(self, event) -> tuple[int, None]:
        self.reports.append(event.event_information)
        return 0x0000, None  # pynetdicom wants (status, event reply)

    def request(self, port: int, instances: list[Path], *, wait_on_association: float = 0) -> int:
        action = Dataset()
        action.TransactionUID = f"2.25.{int(time.time() * 1e6)}"
        refs = []
        for path in instances:
            ds = dcmread(path, stop_before_pixels=True)
            item = Dataset()
            item.ReferencedSOPClassUID = ds.SOPClassUID
            item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            refs.append(item)
        action.ReferencedSOPSequence = refs
        assoc = self.ae.associate("127.0.0.1", port, ae_title="SYNTHIQ", evt_handlers=self.handlers,
                                  contexts=[build_context(StorageCommitmentPushModel)],
                                  ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)])
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_action(action, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            deadline = time.monotonic() + wait_on_association
            while time.monotonic() < deadline and not self.reports:
                time.sleep(0.05)
        finally:
            assoc.release()
        return int(status.Status)

    def stop(self) -> None:
        self.server.shutdown()


def _committed(report: Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for i in report.get("ReferencedSOPSequence", [])}


def test_storage_commitment_reaches_the_orthanc_holding_the_study_and_it_reports_every_instance(pool):
    _, proxy, _, studies, _, _, commit_port = pool
    suid, files = list(studies.items())[3]
    scu = CommitmentScu(commit_port)
    try:
        assert scu.request(proxy.port, files) == 0x0000
        wait_for(lambda: scu.reports, timeout=30, what="Orthanc's N-EVENT-REPORT on a new association")
    finally:
        scu.stop()
    [report] = scu.reports
    assert _committed(report) == {dcmread(p).SOPInstanceUID for p in files}
    assert "FailedSOPSequence" not in report
    assert f"backends={binding_of(suid)}:3" in proxy.process.log()


def test_commitment_for_instances_no_backend_was_sent_reports_them_failed(pool, tmp_path):
    _, proxy, _, _, _, _, commit_port = pool
    _, files = write_study(tmp_path / "never", count=2)
    scu = CommitmentScu(free_port())
    try:
        assert scu.request(proxy.port, files, wait_on_association=10) == 0x0000
    finally:
        scu.stop()
    [report] = scu.reports
    failed = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in report.FailedSOPSequence}
    assert failed == {dcmread(p).SOPInstanceUID: 0x0112 for p in files}


class SameAssociationCommitmentScp:
    """A storage backend that is also a commitment SCP reporting on the same association."""

    def __init__(self):
        from pynetdicom import AllStoragePresentationContexts

        self.port = free_port()
        self.ae = AE(ae_title="COMMITSCP")
        self.ae.supported_contexts = AllStoragePresentationContexts[:100]
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.ae.add_supported_context("1.2.840.10008.1.1")
        self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_N_ACTION, self._action)])

    def _action(self, event):
        info = event.action_information
        assoc = event.assoc

        def report() -> None:
            time.sleep(0.3)  # after the N-ACTION-RSP, as a real SCP does
            event_info = Dataset()
            event_info.TransactionUID = info.TransactionUID
            event_info.ReferencedSOPSequence = info.ReferencedSOPSequence
            assoc.send_n_event_report(event_info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")

        threading.Thread(target=report, daemon=True).start()
        return 0x0000, None

    def stop(self) -> None:
        self.server.shutdown()


def test_a_commitment_scp_reporting_on_the_same_association_reaches_the_modality_through_synthiq(cluster, tmp_path):
    scp = SameAssociationCommitmentScp()
    try:
        proxy = cluster.proxy(cluster.config([{"Id": "scp", "AeTitle": "COMMITSCP", "Host": "127.0.0.1",
                                               "Port": scp.port, "Health": {"Mode": "liveness", "Probe": "tcp"}}]))
        _, files = write_study(tmp_path / "s", count=3)
        assert [s.status for s in send_files(proxy.port, files)] == [0, 0, 0]
        wait_for(lambda: _instances_written(files), timeout=10, what="the instance locations to be written")
        scu = CommitmentScu(free_port())
        try:
            assert scu.request(proxy.port, files, wait_on_association=15) == 0x0000
        finally:
            scu.stop()
    finally:
        scp.stop()
    [report] = scu.reports
    assert _committed(report) == {dcmread(p).SOPInstanceUID for p in files}


def _instances_written(files: list[Path]) -> bool:
    from affinity.models import InstanceLocation

    return InstanceLocation.objects.filter(sop_instance_uid__in=[dcmread(p).SOPInstanceUID for p in files]).count() \
        == len(files)


def test_a_query_for_a_study_whose_backend_is_down_fails_and_no_other_node_answers(cluster, tmp_path):
    orthancs = [start_orthanc(cluster, name=f"o{n}", DicomAet=f"ORTHANC{n}",
                              DicomModalities=_orthanc_modalities(104, 104)) for n in range(2)]
    proxy = cluster.proxy(cluster.config(
        [{"Id": f"node-{n}", "AeTitle": o.ae_title, "Host": "127.0.0.1", "Port": o.dicom_port,
          "Health": {"Mode": "liveness", "Probe": "tcp"}} for n, o in enumerate(orthancs)],
        HeartbeatTimeoutSeconds=600))
    suid, files = write_study(tmp_path / "s", count=1)
    assert send_files(proxy.port, files, calling_ae="STORESCU")[0].status == 0
    bound = binding_of(suid)
    other = orthancs[1 - int(bound[-1])]
    assert send_files(other.dicom_port, files, called_ae=other.ae_title, calling_ae="STORESCU")[0].status == 0
    orthancs[int(bound[-1])].process.stop()
    result, responses = _findscu(proxy.port, tmp_path / "q", f"StudyInstanceUID={suid}")
    assert responses == []  # the copy on the other node is not offered instead
    assert "0xa700" in (result.stdout + result.stderr).lower() or "Refused: OutOfResources" in result.stderr
    # ... and the operator's list of recent failures says which query, whose, and why.
    from routing.models import FailedOperation

    wait_for(lambda: FailedOperation.objects.filter(service="C-FIND", study_uid=suid).exists(), timeout=15,
             what="the failed C-FIND among the recent failures")
    failure = FailedOperation.objects.get(service="C-FIND", study_uid=suid)
    assert (failure.status, failure.calling_ae, failure.backend_id, failure.origin) == (0xA700, "FINDSCU", bound,
                                                                                       "synthiq")
    assert bound in failure.comment


class SlowFindScp:
    """A C-FIND SCP that streams 200 matches, one every 50 ms, and stops on C-CANCEL."""

    def __init__(self):
        self.port = free_port()
        self.sent = 0
        self.cancelled = threading.Event()
        ae = AE(ae_title="SLOWFIND")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context("1.2.840.10008.1.1")
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.2")
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_FIND, self._find)])

    def _find(self, event):
        for n in range(200):
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = f"1.2.3.{n}"
            self.sent += 1
            time.sleep(0.05)
            yield 0xFF00, match
        yield 0x0000, None

    def stop(self) -> None:
        self.server.shutdown()


def test_a_c_cancel_stops_a_long_find(cluster):
    scp = SlowFindScp()
    try:
        proxy = cluster.proxy(cluster.config([{"Id": "slow", "AeTitle": "SLOWFIND", "Host": "127.0.0.1",
                                               "Port": scp.port, "Health": {"Mode": "liveness", "Probe": "tcp"}}],
                                             HeartbeatTimeoutSeconds=600))
        ae = AE(ae_title="FINDSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ")
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        statuses = []
        try:
            for rsp, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=7):
                statuses.append(int(rsp.Status))
                if len(statuses) == 3:
                    assoc.send_c_cancel(7, assoc.accepted_contexts[0].context_id)
        finally:
            assoc.release()
    finally:
        scp.stop()
    assert statuses[-1] == 0xFE00
    assert scp.cancelled.is_set() and scp.sent < 50
