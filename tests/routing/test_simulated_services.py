"""The simulated backend serves what a PACS node serves: DCMTK's findscu, movescu and getscu
against runbackend directly and through runproxy, pynetdicom as the storage commitment
requester (report on the same association, and on a new one), discard mode's honest
answers, the C-FIND result cap, and the README's quick-start lines against the demo."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from routing.dicom.sop_classes import PASSED
from routing.simulators.synthetic import write_study
from tests.harness import (
    DEMO_START_SECONDS,
    PYTHON,
    ROOT,
    Cluster,
    binding_of,
    clean_database,
    dataset_digest,
    free_port,
    require_tool,
    send_files,
    start_storescp,
    wait_for,
)

pytestmark = pytest.mark.slow
DATES = ("20240105", "20240620", "20241230")


class CommitmentRequester:
    """A storage commitment SCU (pynetdicom) listening for reports on a new association too."""

    def __init__(self, port: int):
        self.port = port
        self.reports: list[tuple[str, Dataset]] = []  # (how it came, event information)
        self.ae = AE(ae_title="COMMITSCU")
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.ae.network_timeout = self.ae.acse_timeout = self.ae.dimse_timeout = 30
        self.server = self.ae.start_server(("127.0.0.1", port), block=False,
                                           evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._report, ["new association"])])

    def _report(self, event, how: str) -> tuple[int, None]:
        self.reports.append((how, event.event_information))
        return 0x0000, None  # Success, no Event Reply

    def request(self, port: int, references: list[tuple[str, str]], *, called_ae: str = "SYNTHIQ",
                open_until: Callable[[], object] | None = None) -> int:
        """Ask for commitment; with ``open_until``, keep the association open until it holds
        (at most 15 s): the report may come on it."""
        action = Dataset()
        action.TransactionUID = f"2.25.{time.time_ns()}"
        action.ReferencedSOPSequence = []
        for sop_class, sop in references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop
            action.ReferencedSOPSequence.append(item)
        assoc = self.ae.associate("127.0.0.1", port, ae_title=called_ae,
                                  evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._report, ["same association"])],
                                  contexts=[build_context(StorageCommitmentPushModel)],
                                  ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)])
        assert assoc.is_established
        try:
            rsp, _ = assoc.send_n_action(action, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            if open_until is not None:
                wait_for(open_until, timeout=15, what="the report on the requester's association")
        finally:
            assoc.release()
        return int(rsp.Status)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two simulated backends that keep what they store behind runproxy, a storescp move
    destination, a commitment requester's listener; three dated studies sent through it."""
    clean_database()
    cluster = Cluster(tmp=tmp_path_factory.mktemp("sim"), env=dict(os.environ))
    requester = None
    try:
        dest_port, _ = start_storescp(cluster, name="dest", ae_title="STORESCP")
        requester = CommitmentRequester(free_port())
        told = {"move_destination": f"STORESCP=127.0.0.1:{dest_port}",
                "commitment_requester": f"COMMITSCU=127.0.0.1:{requester.port}"}
        backends = [cluster.backend(f"node-{n}", store=True, **told) for n in ("a", "b")]
        proxy = cluster.proxy(cluster.config(backends, HeartbeatTimeoutSeconds=600))
        studies: dict[str, list[Path]] = {}
        for n, date in enumerate(DATES):
            suid, files = write_study(cluster.tmp / f"s{n}", count=3, patient_id=f"SIM{n}", study_date=date)
            assert [s.status for s in send_files(proxy.port, files, calling_ae="STORESCU")] == [0, 0, 0]
            studies[suid] = files
        yield cluster, proxy, {b.id: b for b in backends}, studies, requester
    finally:
        if requester is not None:
            requester.stop()
        cluster.stop_all()


def _findscu(port: int, cwd: Path, *keys: str, called_ae: str = "SYNTHIQ", model: str = "-S",
             options: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, list[Dataset]]:
    exe = require_tool("findscu", "dcmtk")
    cwd.mkdir(parents=True, exist_ok=True)
    args = [exe, model, "-X", *options, "-aet", "FINDSCU", "-aec", called_ae]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run([*args, "127.0.0.1", str(port)], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, [dcmread(p) for p in sorted(cwd.glob("rsp*.dcm"))]


def _sops(files: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def test_runproxy_learns_that_the_simulated_backends_offer_every_service(pool):
    _, proxy, _, _, _ = pool
    line = next(x for x in proxy.process.log().splitlines() if "transfer syntaxes accepted" in x)
    assert "services: none" not in line
    assert all(uid in line for uid in PASSED), line


def test_findscu_against_a_backend_at_study_series_and_image_level_with_counts_and_lists(pool, tmp_path):
    _, _, backends, studies, _ = pool
    holder = backends[binding_of(next(iter(studies)))]
    held = [s for s in studies if binding_of(s) == holder.id]
    # Study level: a UID list (one not held), the counts, and a key nobody stored returned empty.
    _, found = _findscu(holder.port, tmp_path / "study", "QueryRetrieveLevel=STUDY",
                        "StudyInstanceUID=" + "\\".join([*held, "1.2.3.999"]), "NumberOfStudyRelatedInstances",
                        "NumberOfStudyRelatedSeries", "ModalitiesInStudy", "StudyDate", "AccessionNumber",
                        called_ae=holder.ae_title)
    assert sorted(str(r.StudyInstanceUID) for r in found) == sorted(held)
    assert {int(r.NumberOfStudyRelatedInstances) for r in found} == {3}
    assert {int(r.NumberOfStudyRelatedSeries) for r in found} == {1} and {r.ModalitiesInStudy for r in found} == {"CT"}
    assert all("AccessionNumber" in r and r.AccessionNumber in ("", None) for r in found)
    suid = held[0]
    files = studies[suid]
    # Series level within the study.
    _, series = _findscu(holder.port, tmp_path / "series", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={suid}",
                         "SeriesInstanceUID", "NumberOfSeriesRelatedInstances", "Modality", called_ae=holder.ae_title)
    assert [(str(r.SeriesInstanceUID), int(r.NumberOfSeriesRelatedInstances), r.Modality) for r in series] == \
        [(str(dcmread(files[0]).SeriesInstanceUID), 3, "CT")]
    # Image level: a list of two of the three SOP Instance UIDs.
    two = sorted(_sops(files))[:2]
    _, images = _findscu(holder.port, tmp_path / "image", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={suid}",
                         "SOPInstanceUID=" + "\\".join(two), "SOPClassUID", called_ae=holder.ae_title)
    assert sorted(str(r.SOPInstanceUID) for r in images) == two
    assert {str(r.SOPClassUID) for r in images} == {CTImageStorage}


def test_findscu_gets_the_same_study_answers_in_each_syntax_it_may_propose(pool, tmp_path):
    """The backend writes its Pending responses itself in Little Endian contexts (implicit or
    explicit VR) and lets pynetdicom write them otherwise (big endian): DCMTK reads the same."""
    _, _, backends, studies, _ = pool
    holder = backends[binding_of(next(iter(studies)))]
    held = sorted(s for s in studies if binding_of(s) == holder.id)
    answers = {}
    for option in ("-xi", "-xe", "-xb"):
        _, found = _findscu(holder.port, tmp_path / option, "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                            "StudyDate", "NumberOfStudyRelatedInstances", "PatientName", "StudyDescription",
                            called_ae=holder.ae_title, options=(option,))
        answers[option] = sorted((str(r.StudyInstanceUID), r.StudyDate, int(r.NumberOfStudyRelatedInstances),
                                  str(r.PatientName), r.QueryRetrieveLevel) for r in found)
    assert [a[0] for a in answers["-xi"]] == held
    assert answers["-xi"] == answers["-xe"] == answers["-xb"]


def test_findscu_through_synthiq_by_date_range_and_at_image_level(pool, tmp_path):
    _, proxy, _, studies, _ = pool
    by_date = dict(zip(DATES, studies, strict=True))
    _, found = _findscu(proxy.port, tmp_path / "dates", "QueryRetrieveLevel=STUDY", "StudyDate=20240101-20240630",
                        "StudyInstanceUID", "NumberOfStudyRelatedInstances")
    assert sorted(str(r.StudyInstanceUID) for r in found) == sorted([by_date["20240105"], by_date["20240620"]])
    suid, files = next(iter(studies.items()))
    _, images = _findscu(proxy.port, tmp_path / "images", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={suid}",
                         "SOPInstanceUID")
    assert {str(r.SOPInstanceUID) for r in images} == _sops(files)


def test_findscu_through_synthiq_with_the_patient_root_model(pool, tmp_path):
    _, proxy, _, studies, _ = pool
    _, patients = _findscu(proxy.port, tmp_path / "patients", "QueryRetrieveLevel=PATIENT", "PatientID=SIM1",
                           "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances", model="-P")
    assert [(r.PatientID, int(r.NumberOfPatientRelatedStudies), int(r.NumberOfPatientRelatedInstances))
            for r in patients] == [("SIM1", 1, 3)]
    _, found = _findscu(proxy.port, tmp_path / "studies", "QueryRetrieveLevel=STUDY", "PatientID=SIM1",
                        "StudyInstanceUID", model="-P")
    assert [str(r.StudyInstanceUID) for r in found] == [list(studies)[1]]


def test_movescu_through_synthiq_delivers_the_study_unchanged_to_the_destination(pool):
    cluster, proxy, _, studies, _ = pool
    suid, files = list(studies.items())[1]
    exe = require_tool("movescu", "dcmtk")
    result = subprocess.run([exe, "-S", "-aet", "MOVESCU", "-aec", "SYNTHIQ", "-aem", "STORESCP",
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={suid}",
                             "127.0.0.1", str(proxy.port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Error" not in result.stderr, result.stdout + result.stderr
    out = cluster.tmp / "dest"
    moved = wait_for(lambda: (lambda fs: fs if len(fs) == len(files) else None)(list(out.iterdir())),
                     timeout=20, what="storescp to receive the study")
    assert {dataset_digest(p) for p in moved} == {dataset_digest(p) for p in files}
    assert f"C-MOVE pool=main calling_ae=MOVESCU source_ip=127.0.0.1 level=STUDY study={suid}" in proxy.process.log()


def test_a_move_to_a_destination_the_backend_was_not_told_about_is_0xa801(pool):
    _, proxy, _, studies, _ = pool
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = next(iter(studies))
    try:
        statuses = [int(rsp.Status) for rsp, _ in assoc.send_c_move(query, "NOWHERE",
                                                                   StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()
    assert statuses == [0xA801]


def test_getscu_through_synthiq_receives_the_study_unchanged_on_its_association(pool, tmp_path):
    _, proxy, _, studies, _ = pool
    suid, files = list(studies.items())[2]
    exe = require_tool("getscu", "dcmtk")
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run([exe, "-S", "-aet", "GETSCU", "-aec", "SYNTHIQ", "-od", str(out),
                             "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={suid}",
                             "-k", f"SeriesInstanceUID={dcmread(files[0]).SeriesInstanceUID}",
                             "127.0.0.1", str(proxy.port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {dataset_digest(p) for p in out.iterdir()} == {dataset_digest(p) for p in files}


def _instances_located(sops: set[str]) -> bool:
    from affinity.models import InstanceLocation

    return InstanceLocation.objects.filter(sop_instance_uid__in=sops).count() == len(sops)


def _references(files: list[Path], *extra: str) -> list[tuple[str, str]]:
    return [(CTImageStorage, s) for s in sorted(_sops(files))] + [(CTImageStorage, s) for s in extra]


def _commitments(backend) -> list[dict]:
    return requests.get(f"{backend.url}/api/commitments", timeout=5).json()


def test_storage_commitment_through_synthiq_is_reported_on_the_same_association(pool):
    _, proxy, backends, studies, requester = pool
    suid, files = list(studies.items())[0]
    wait_for(lambda: _instances_located(_sops(files)), timeout=10, what="the instance locations to be written")
    requester.reports.clear()
    holder = backends[binding_of(suid)]
    # One instance no backend holds: SynthIQ asks the holder for its share and sends the one
    # merged report itself, on the requester's association (kept open until it comes).
    status = requester.request(proxy.port, _references(files, "1.2.3.4.5.6"), open_until=lambda: requester.reports)
    assert status == 0x0000
    [(how, report)] = requester.reports
    assert how == "same association"
    assert {str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence} == _sops(files)
    # The instance never sent is reported failed: No such object instance.
    assert [(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in report.FailedSOPSequence] == \
        [("1.2.3.4.5.6", 0x0112)]
    # The holder was asked for its share only (SynthIQ calling as the requester), and answered on that association.
    [record] = _commitments(holder)
    assert record | {"transaction": ""} == {"transaction": "", "requester": "COMMITSCU", "committed": 3, "failed": 0,
                                            "delivered": "same association"}


def test_storage_commitment_after_the_requester_released_comes_on_a_new_association(pool):
    _, proxy, backends, studies, requester = pool
    suid, files = list(studies.items())[1]
    holder = backends[binding_of(suid)]
    holder.control(commitment_delay_ms=1500)  # the requester is gone by then
    try:
        wait_for(lambda: _instances_located(_sops(files)), timeout=10, what="the instance locations to be written")
        requester.reports.clear()
        assert requester.request(proxy.port, _references(files)) == 0x0000
        [(how, report)] = wait_for(lambda: requester.reports, timeout=15, what="the report on a new association")
    finally:
        holder.control(commitment_delay_ms=200)
    assert how == "new association"
    assert {str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence} == _sops(files)
    assert "FailedSOPSequence" not in report
    delivered = wait_for(lambda: [r["delivered"] for r in _commitments(holder)
                                  if r["delivered"].startswith("new association")], timeout=5, what="the record")
    assert delivered == [f"new association to 127.0.0.1:{requester.port}"]


# -- discard mode and the result cap: a backend of its own, queried directly ------------


@pytest.fixture(scope="module")
def discarding(tmp_path_factory):
    cluster = Cluster(tmp=tmp_path_factory.mktemp("discard"), env=dict(os.environ))
    try:
        backend = cluster.backend("node-x", find_limit=2, move_destination="ANY=127.0.0.1:9")
        studies = {}
        for n, date in enumerate(DATES):
            suid, files = write_study(cluster.tmp / f"s{n}", count=2, study_date=date)
            assert [s.status for s in send_files(backend.port, files, called_ae=backend.ae_title)] == [0, 0]
            studies[suid] = files
        yield backend, studies
    finally:
        cluster.stop_all()


def _find(backend, **keys: str) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", backend.port, ae_title=backend.ae_title)
    query = Dataset()
    for key, value in keys.items():
        setattr(query, key, value)
    try:
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        return [(int(rsp.Status), ds) for rsp, ds in responses]
    finally:
        assoc.release()


def test_a_capped_find_ends_after_the_cap_with_0xfe00_and_a_narrower_one_succeeds(discarding):
    backend, studies = discarding
    everything = _find(backend, QueryRetrieveLevel="STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="")
    assert [code for code, _ in everything] == [0xFF00, 0xFF00, 0xFE00]  # nobody cancelled: the cap
    # Discard mode still indexes what it received: the counts are answered.
    assert {int(ds.NumberOfStudyRelatedInstances) for code, ds in everything if code == 0xFF00} == {2}
    one = _find(backend, QueryRetrieveLevel="STUDY", StudyInstanceUID="", StudyDate="20240601-")
    assert [code for code, _ in one] == [0xFF00, 0xFF00, 0x0000]


def test_discard_mode_answers_a_retrieve_0xa702_with_a_comment_and_every_instance_failed(discarding):
    backend, studies = discarding
    suid, files = next(iter(studies.items()))
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = suid
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", backend.port, ae_title=backend.ae_title,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)])
    try:
        [(rsp, identifier)] = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert int(rsp.Status) == 0xA702 and "discard mode" in rsp.ErrorComment
    assert int(rsp.NumberOfFailedSuboperations) == len(files)
    assert set(identifier.FailedSOPInstanceUIDList) == _sops(files)


def test_a_node_seeded_over_http_answers_date_windows_and_forgets_a_lost_instance(discarding):
    backend, _ = discarding
    rows = [{"StudyInstanceUID": f"2.25.{n}", "SOPInstanceUID": f"2.25.{n}.{k}", "StudyDate": f"199901{1 + n % 28:02d}",
             "PatientID": f"SEED{n}"} for n in range(500) for k in range(2)]
    assert requests.post(f"{backend.url}/api/instances", json=rows, timeout=30).json() == {"added": 1000}
    bad = requests.post(f"{backend.url}/api/instances", json=[{"StudyInstanceUID": "1.2.x", "SOPInstanceUID": "1.2"}],
                        timeout=5)
    assert bad.status_code == 400 and "row 0: StudyInstanceUID '1.2.x' is invalid" in bad.text
    backend.control(find_limit=0)
    try:
        window = _find(backend, QueryRetrieveLevel="STUDY", StudyInstanceUID="", StudyDate="19990103-19990104",
                       NumberOfStudyRelatedInstances="")
        requests.delete(f"{backend.url}/api/instances/2.25.2.0", timeout=5).raise_for_status()
        after = _find(backend, QueryRetrieveLevel="STUDY", StudyInstanceUID="2.25.2", NumberOfStudyRelatedInstances="")
    finally:
        backend.control(find_limit=2)
    matched = {str(ds.StudyInstanceUID): int(ds.NumberOfStudyRelatedInstances) for code, ds in window if code == 0xFF00}
    assert matched == {f"2.25.{n}": 2 for n in range(500) if n % 28 in (2, 3)}
    assert [(code, int(ds.NumberOfStudyRelatedInstances)) for code, ds in after if code == 0xFF00] == [(0xFF00, 1)]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, about the UID this test sends
def test_an_invalid_uid_key_is_refused_0xa900(discarding):
    backend, _ = discarding
    [(code, _)] = _find(backend, QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.abc")
    assert code == 0xA900


def test_a_restarted_node_still_holds_what_it_stored(cluster, tmp_path):
    backend = cluster.backend("node-r", store=True)
    suid, files = write_study(tmp_path / "s", count=2, study_date="20240301")
    assert [s.status for s in send_files(backend.port, files, called_ae=backend.ae_title)] == [0, 0]
    before = backend.holdings()
    backend.process.stop()
    backend.process.start()
    assert "2 instances found in" in backend.process.log()
    assert backend.holdings() == before == {suid: {dcmread(p).SOPInstanceUID: dataset_digest(p) for p in files}}
    [(code, ds), _] = _find(backend, QueryRetrieveLevel="STUDY", StudyInstanceUID="", StudyDate="20240301",
                            NumberOfStudyRelatedInstances="")
    assert (code, str(ds.StudyInstanceUID), int(ds.NumberOfStudyRelatedInstances)) == (0xFF00, suid, 2)


# -- the README's quick start against the demo ----------------------------------------


def _taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_readme_quick_start_lines_work_against_the_demo(cluster, tmp_path):
    """The README's storescu, echoscu, findscu, getscu and movescu lines, run as written
    by bash, with the demo's ports chosen free, a study folder, and a UID findscu printed;
    then storage commitment through the demo, and the dashboard's counters of each service."""
    for tool in ("storescu", "echoscu", "findscu", "getscu", "movescu"):
        require_tool(tool, "dcmtk")
    dicom_port, http_port, move_port = free_port(), free_port(), free_port()
    base = random.randrange(20000, 32000 - 200)  # below the ephemeral range, as the demo test does
    while any(_taken(base + n) for n in (1, 2, 3, 101, 102, 103)):
        base = random.randrange(20000, 32000 - 200)
    requester = CommitmentRequester(free_port())
    request_addr = f"COMMITSCU=127.0.0.1:{requester.port}"
    try:
        demo = cluster.process(
            "demo", [PYTHON, "manage.py", "demo", "--dicom-port", str(dicom_port), "--http", f"127.0.0.1:{http_port}",
                     "--backend-base-port", str(base), "--move-destination", f"MOVESCU=127.0.0.1:{move_port}",
                     "--commitment-requester", request_addr],
            ready="runproxy ready", timeout=DEMO_START_SECONDS)
        _readme_lines_against(demo, dicom_port, http_port, move_port, requester, tmp_path)
    finally:
        requester.stop()


def _readme_lines_against(demo, dicom_port: int, http_port: int, move_port: int, requester: CommitmentRequester,
                          tmp_path: Path) -> None:
    token = re.search(r"Authorization: Token (\w+)", demo.log()).group(1)
    assert "services: none" not in demo.log()
    suid, files = write_study(tmp_path / "study", count=2)

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    send = next(b for b in blocks if "storescu" in b)
    query = next(b for b in blocks if "findscu" in b)

    def run(block: str, cwd: Path) -> str:
        script = block.replace("11112", str(dicom_port)).replace("11114", str(move_port))
        script = script.replace("/path/to/study/", str(tmp_path / "study"))
        script = re.sub(r"^STUDY=.*$", f"STUDY={suid}", script, flags=re.M)
        done = subprocess.run(["bash", "-e", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, script + done.stdout + done.stderr
        return done.stdout + done.stderr

    work = tmp_path / "work"
    work.mkdir()
    run(send, work)
    output = run(query, work)
    assert suid in output  # findscu printed the study
    assert "NumberOfStudyRelatedInstances" in output
    assert {dataset_digest(p) for p in (work / "got").iterdir()} == {dataset_digest(p) for p in files}
    assert {dataset_digest(p) for p in (work / "moved").iterdir()} == {dataset_digest(p) for p in files}

    def operations() -> dict:
        return requests.get(f"http://127.0.0.1:{http_port}/api/status", timeout=5,
                            headers={"Authorization": f"Token {token}"}).json()["counters"]["operations"]

    # Storage commitment through the demo: reported on the requester's association, or, once it
    # has released, on a new one to the address the demo told its backends.
    wait_for(lambda: _instances_located(_sops(files)), timeout=10, what="the instance locations to be written")
    on_association = requester.request(dicom_port, _references(files), open_until=lambda: requester.reports)
    assert on_association == 0x0000
    assert requester.request(dicom_port, _references(files, "1.2.3.4.5.6")) == 0x0000
    wait_for(lambda: len(requester.reports) == 2, timeout=15, what="the second report, on a new association")
    assert [(how, {str(i.ReferencedSOPInstanceUID) for i in r.ReferencedSOPSequence}) for how, r in requester.reports] \
        == [("same association", _sops(files)), ("new association", _sops(files))]

    counted = wait_for(lambda: (lambda ops: ops if all(ops.get(s, {}).get("success") for s in
                                                       ("C-FIND", "C-GET", "C-MOVE", "N-ACTION")) else None)(
                           operations()), timeout=15, what="the dashboard's counters to show every service")
    assert counted["C-MOVE"]["success"] >= 1


def test_the_demo_refuses_a_move_destination_it_cannot_read_in_one_line(tmp_path):
    done = subprocess.run([PYTHON, "manage.py", "demo", "--move-destination", "MOVESCU@127.0.0.1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "expected AE=host:port" in done.stderr


def test_a_long_search_written_as_bytes_is_cancelled_by_the_ledger_client_and_released(tmp_path):
    """Thousands of Pending responses come from the backend's byte path in batches; SynthIQ's
    C-FIND client that stops reading sends C-CANCEL, reads on to the final response (0xFE00
    when the cancel was seen between batches, Success when every batch had been written) and
    releases: the backend counts a release, not an abort, and answers the next search whole."""
    from routing.dicom import findscu
    from routing.dicom.scu import Peer

    cluster = Cluster(tmp=tmp_path, env=dict(os.environ))
    try:
        backend = cluster.backend("node-c")
        rows = [{"StudyInstanceUID": f"1.2.826.0.1.9.{n}", "SOPInstanceUID": f"1.2.826.0.1.9.{n}.1.1",
                 "StudyDate": "20240101"} for n in range(6000)]
        requests.post(f"{backend.url}/api/instances", json=rows, timeout=60).raise_for_status()
        peer = Peer(backend.id, backend.ae_title, "127.0.0.1", backend.port)
        query = [(0x00080052, "CS", "STUDY"), (0x0020000D, "UI", "")]
        responses = findscu.find(peer, calling_ae="SYNTHIQ", model=StudyRootQueryRetrieveInformationModelFind,
                                 query=query, wanted=frozenset({0x0020000D}), timeout=10)
        first = next(responses)
        assert first.status == 0xFF00 and first.values[0x0020000D].startswith("1.2.826.0.1.9.")
        responses.close()
        assert wait_for(lambda: requests.get(f"{backend.url}/api/associations", timeout=5).json()["released"] == 1,
                        timeout=10, what="the release")
        assert requests.get(f"{backend.url}/api/associations", timeout=5).json()["aborted"] == 0
        everything = list(findscu.find(peer, calling_ae="SYNTHIQ", model=StudyRootQueryRetrieveInformationModelFind,
                                       query=query, wanted=frozenset({0x0020000D}), timeout=10))
        assert len(everything) == 6001 and everything[-1].status == 0x0000
    finally:
        cluster.stop_all()
