"""DICOMweb through SynthIQ against three real Orthancs with their DICOMweb plugin: STOW-RS
split by study and placed with the DIMSE bindings, QIDO-RS merged, WADO-RS from the study's
node byte for byte, failures listed per part, hostile bodies refused, credentials required.
Clients: the dicomweb-client library, and requests for exact bytes."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from routing.simulators.synthetic import write_study
from tests.harness import (
    Cluster,
    binding_of,
    clean_database,
    dataset_digest,
    free_port,
    orthanc_dicomweb_plugin,
    start_orthanc,
)

pytestmark = pytest.mark.slow
NODES = ("a", "b", "c")
USER, PASSWORD = "dicomweb-user", "a-long-test-password"
MAX_BODY = 1 << 20  # the pool's MaxBodyBytes: every other request here is far smaller
SLOW = 4  # Network.NetworkTimeoutSeconds: how long a client may send nothing of its body


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Three Orthancs (DICOMweb plugin, the Lua filter) behind runproxy --workers 2, whose
    pool has DICOMweb with stored backend credentials (so clients must log in)."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    clean_database()
    user = User.objects.filter(username=USER).first() or User.objects.create_user(USER, password=PASSWORD)
    token, _ = Token.objects.get_or_create(user=user)
    TOKEN[:] = [token.key]
    cluster = Cluster(tmp=tmp_path_factory.mktemp("dicomweb"), env=dict(os.environ))
    try:
        orthancs = {n: start_orthanc(cluster, name=f"orthanc-{n}", DicomAet=f"ORTHANC{n.upper()}",
                                     Plugins=[orthanc_dicomweb_plugin()],
                                     DicomModalities={"storescu": ["STORESCU", "127.0.0.1", 104]})
                    for n in NODES}
        backends = [{"Id": f"node-{n}", "AeTitle": o.ae_title, "Host": "127.0.0.1", "Port": o.dicom_port,
                     "Health": {"Mode": "liveness", "Probe": "echo"},
                     "DicomWebUrl": f"{o.url}/dicom-web", "DicomWebUsername": "orthanc",
                     "DicomWebPassword": "unused-by-this-orthanc"} for n, o in orthancs.items()]
        web_port = free_port()
        config = cluster.config(backends, HeartbeatTimeoutSeconds=600, Network={"NetworkTimeoutSeconds": SLOW},
                                pool={"DicomWeb": {"Port": web_port, "MaxBodyBytes": MAX_BODY}})
        proxy = cluster.proxy(config, extra_args=["--workers", "2"], http=True)
        base = f"http://127.0.0.1:{web_port}/dicom-web"
        yield cluster, proxy, orthancs, base, token.key
    finally:
        cluster.stop_all()


TOKEN: list[str] = []  # the API token of the fixture's user


def _session(token: str | None = None, *, basic: bool = False) -> requests.Session:
    """A client of SynthIQ's: its API token (cheap to check), or Basic (a password hash per request)."""
    session = requests.Session()
    if basic:
        session.auth = (USER, PASSWORD)
    else:
        session.headers["Authorization"] = f"Token {token or TOKEN[0]}"
    return session


def _stow(base: str, paths: list[Path], *, study: str | None = None, session=None,
          accept: str = "application/dicom+json") -> requests.Response:
    """STOW-RS of the files' exact bytes, as curl would send them."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    return (session or _session()).post(
        f"{base}/studies" + (f"/{study}" if study else ""), data=body, timeout=60,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                 "Accept": accept})


def _holders(orthancs, suid: str) -> dict[str, int]:
    """node -> how many instances of the study it holds."""
    out = {}
    for n, o in orthancs.items():
        found = requests.get(f"{o.url}/dicom-web/studies/{suid}/instances", timeout=10)
        if found.status_code == 200 and found.content:
            out[f"node-{n}"] = len(found.json())
    return {k: v for k, v in out.items() if v}


def _stored_digest(orthanc, sop_uid: str) -> str:
    """SHA-256 of the data set Orthanc stored (after the File Meta, which it writes itself)."""
    [found] = requests.post(f"{orthanc.url}/tools/lookup", data=sop_uid, timeout=10).json()
    data = requests.get(f"{orthanc.url}/instances/{found['ID']}/file", timeout=10).content
    path = Path(f"/tmp/synthiq-dicomweb-{os.getpid()}-{sop_uid}.dcm")
    path.write_bytes(data)
    try:
        return dataset_digest(path)
    finally:
        path.unlink()


def _sequence(body: dict, key: str) -> list[dict]:
    return body.get(key, {}).get("Value", [])


def _sop(item: dict) -> str:
    return item["00081155"]["Value"][0]


def _assert_whole_and_exact(orthancs, suid: str, paths: list[Path]) -> str:
    holders = _holders(orthancs, suid)
    assert holders == {binding_of(suid): len(paths)}, holders
    node = orthancs[binding_of(suid).removeprefix("node-")]
    for p in paths:
        assert _stored_digest(node, dcmread(p, stop_before_pixels=True).SOPInstanceUID) == dataset_digest(p)
    return binding_of(suid)


# -- STOW-RS ----------------------------------------------------------------------------------

def test_a_store_response_of_many_segments_is_read_whole(pool):
    """300 instances in one request: the backend's answer (tens of KB) comes in several TCP
    segments; every instance is reported stored, none lost to a store response read short."""
    cluster, _, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "many", count=300, rows=8, columns=8, patient_id="MANY")
    answer = _stow(base, paths)
    assert answer.status_code == 200, answer.text[:300]
    assert sorted(_sop(i) for i in _sequence(answer.json(), "00081199")) == sorted(p.stem for p in paths)
    assert _holders(orthancs, suid) == {binding_of(suid): 300}


def test_a_study_sent_half_by_c_store_and_half_by_stow_lands_whole_on_one_node(pool):
    from tests.harness import send_files

    cluster, proxy, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "mixed", count=4, patient_id="MIXED")
    assert [s.status for s in send_files(proxy.port, paths[:2], calling_ae="STORESCU")] == [0, 0]
    bound = binding_of(suid)
    for p in paths[2:]:  # two requests, each on its own connection (and so possibly another worker)
        answer = _stow(base, [p], session=_session(basic=True))
        assert answer.status_code == 200, answer.text
        [stored] = _sequence(answer.json(), "00081199")
        assert _sop(stored) == p.name.removesuffix(".dcm")
    assert _assert_whole_and_exact(orthancs, suid, paths) == bound


def test_a_request_mixing_three_studies_stores_each_whole_on_the_node_of_its_binding(pool):
    cluster, _, orthancs, base, _ = pool
    studies = [write_study(cluster.tmp / f"three-{n}", count=2, patient_id=f"THREE{n}") for n in range(3)]
    interleaved = [paths[i] for i in range(2) for _, paths in studies]
    answer = _stow(base, interleaved)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert sorted(_sop(i) for i in _sequence(body, "00081199")) == sorted(p.stem for p in interleaved)
    assert not _sequence(body, "00081198")
    for suid, paths in studies:
        _assert_whole_and_exact(orthancs, suid, paths)
    # The RetrieveURLs are SynthIQ's (Forwarded), not a node's.
    assert all(i["00081190"]["Value"][0].startswith(base) for i in _sequence(body, "00081199"))


def test_stow_with_dicomweb_client_and_the_study_in_the_url(pool):
    cluster, _, orthancs, base, token = pool
    suid, paths = write_study(cluster.tmp / "client", count=3, patient_id="CLIENT")
    client = DICOMwebClient(url=base, session=_session(token))
    result = client.store_instances([dcmread(p) for p in paths[:2]], study_instance_uid=suid)
    assert len(result.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in result
    # A client asking for XML gets the store response in the Native DICOM Model.
    answer = _stow(base, paths[2:], study=suid, accept="application/dicom+xml")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/dicom+xml")
    assert b'keyword="ReferencedSOPSequence"' in answer.content and paths[2].stem.encode() in answer.content
    assert _holders(orthancs, suid) == {binding_of(suid): 3}


def test_parts_with_an_invalid_or_no_study_uid_fail_alone_and_the_others_are_stored(pool):
    cluster, _, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "invalid", count=4, patient_id="INVALID")
    bad = cluster.tmp / "invalid-uid.dcm"
    bad_uid = ("1.2.x" + suid[5:]).encode()  # same length: the file stays well-formed
    bad.write_bytes(paths[1].read_bytes().replace(suid.encode(), bad_uid))
    missing = cluster.tmp / "no-study-uid.dcm"
    ds = dcmread(paths[3])
    del ds.StudyInstanceUID
    ds.save_as(missing)
    answer = _stow(base, [paths[0], bad, paths[2], missing])
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert sorted(_sop(i) for i in _sequence(body, "00081199")) == sorted([paths[0].stem, paths[2].stem])
    failed = _sequence(body, "00081198")
    assert sorted(_sop(f) for f in failed) == sorted([paths[1].stem, paths[3].stem])
    assert all(f["00081197"]["Value"] == [0xC000] for f in failed)
    assert _holders(orthancs, suid) == {binding_of(suid): 2}
    assert _holders(orthancs, bad_uid.decode()) == {}


def test_a_part_the_backend_cannot_store_is_the_only_one_failed_whatever_its_http_status(pool):
    """A part whose header reads well but whose body is cut short: Orthanc's plugin (1.7)
    answers 400 for the whole request, lists the others as stored and says nothing of that
    part (and it reports an instance its Lua ReceivedInstanceFilter refused as stored, so a
    cut part is how a backend fails one part here). SynthIQ merges from the body: the part
    the backend did not answer for is failed (0x0110), the others stored."""
    cluster, _, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "refused", count=3, patient_id="PARTLY")
    paths[1].write_bytes(paths[1].read_bytes()[:-3000])
    answer = _stow(base, paths)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert sorted(_sop(i) for i in _sequence(body, "00081199")) == sorted([paths[0].stem, paths[2].stem])
    [failed] = _sequence(body, "00081198")
    assert _sop(failed) == paths[1].stem and failed["00081197"]["Value"] == [0x0110]
    assert _holders(orthancs, suid) == {binding_of(suid): 2}


@pytest.mark.parametrize("content_type, body, status", [
    ("application/dicom", b"\0" * 200, 415),
    ('multipart/related; type="application/dicom+json"; boundary=x', b"--x--\r\n", 415),
    ('multipart/related; type="application/dicom"', b"--x--\r\n", 400),
    ('multipart/related; type="application/dicom"; boundary=x', b"--x--\r\n", 400),
    ('multipart/related; type="application/dicom"; boundary=x', b"--x\r\nContent-Type: " + b"A" * 100_000, 400),
], ids=["not-multipart", "json-parts", "no-boundary", "no-part", "endless-part-header"])
def test_a_body_synthiq_does_not_relay_is_refused_with_its_status(pool, content_type, body, status):
    _, _, _, base, _ = pool
    answer = _session().post(f"{base}/studies", data=body, headers={"Content-Type": content_type}, timeout=30)
    assert answer.status_code == status, answer.text


def test_a_malformed_multipart_body_is_a_400_and_nothing_of_it_lands_off_its_study_node(pool):
    """The request fails as a whole. A part the backend already took whole may be stored
    (Orthanc's plugin stores each part as it ends): on the study's own node, never elsewhere;
    the client, told 400, sends again."""
    cluster, _, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "malformed", count=2, patient_id="MALFORMED")
    boundary = "b0undary"
    # A whole first part, then a second that never reaches a boundary: the body ends inside it.
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + paths[0].read_bytes()
            + f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + paths[1].read_bytes()[:5000])
    answer = _session().post(f"{base}/studies", data=body, timeout=30, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert answer.status_code == 400, answer.text
    holders = _holders(orthancs, suid)
    assert set(holders) <= {binding_of(suid)} and sum(holders.values()) <= 1  # never the cut second part


def test_a_body_past_max_body_bytes_is_a_413_and_its_cut_part_is_not_stored(pool):
    cluster, _, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "oversize", count=3, rows=512, columns=512, patient_id="OVERSIZE")
    boundary = "big"

    def body():  # chunked (no Content-Length): the limit is met while the parts stream on
        for p in paths:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    answer = _session().post(f"{base}/studies", data=body(), timeout=30, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert answer.status_code == 413, answer.text
    # The parts the backend took whole before the limit (each ~513 KB, the limit 1 MiB: the
    # first) may be stored, on the study's node; the part cut by the limit never is.
    holders = _holders(orthancs, suid)
    assert set(holders) <= {binding_of(suid)} and sum(holders.values()) <= 1


def test_a_client_that_stops_sending_its_body_gets_408_and_others_are_served_meanwhile(pool):
    import socket
    import time

    cluster, _, orthancs, base, _ = pool
    suid, [path] = write_study(cluster.tmp / "slow", count=1, patient_id="SLOW")
    data = path.read_bytes()
    port = int(base.split(":")[2].split("/")[0])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=SLOW * 4) as sock:
        sock.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b'Content-Type: multipart/related; type="application/dicom"; boundary=slow\r\n'
                     + f"Authorization: Token {TOKEN[0]}\r\nContent-Length: {len(data) + 200}\r\n\r\n".encode()
                     + b"--slow\r\nContent-Type: application/dicom\r\n\r\n" + data[:len(data) // 2])
        # Then nothing: meanwhile another client is served at once.
        assert _session().get(f"{base}/studies", timeout=SLOW).status_code == 200
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and SLOW <= time.monotonic() - started < SLOW * 3
    assert _holders(orthancs, suid) == {}  # the half part forwarded was cut, never stored


# -- QIDO-RS and WADO-RS ------------------------------------------------------------------------

def test_qido_through_synthiq_returns_what_the_three_nodes_hold_once(pool):
    from tests.harness import send_files

    cluster, _, orthancs, base, token = pool
    split, split_paths = write_study(cluster.tmp / "split", count=2, patient_id="QIDOSPLIT")
    for n in ("a", "b"):  # a study on two nodes (as an L4 balancer leaves it): listed once
        assert send_files(orthancs[n].dicom_port, split_paths, called_ae=orthancs[n].ae_title,
                          calling_ae="STORESCU")[0].status == 0
    direct = set()
    for o in orthancs.values():
        direct |= {s["0020000D"]["Value"][0] for s in requests.get(f"{o.url}/dicom-web/studies", timeout=10).json()}
    client = DICOMwebClient(url=base, session=_session(token))
    studies = client.search_for_studies()
    uids = [s["0020000D"]["Value"][0] for s in studies]
    assert len(uids) == len(set(uids)) and set(uids) == direct and split in direct
    page = client.search_for_studies(limit=2, offset=1)
    assert [s["0020000D"]["Value"][0] for s in page] == uids[1:3]
    # The same study on two nodes, bound to the later one in the pool's order: the merged
    # answer is the bound node's object (2 instances there), not the first node's (1).
    import datetime as dt

    from affinity.models import Binding

    bound_split, bound_paths = write_study(cluster.tmp / "bound-split", count=2, patient_id="BOUNDSPLIT")
    now = dt.datetime.now(dt.UTC)
    Binding.objects.create(pool_id="main", study_uid=bound_split, backend_id="node-c", first_seen_utc=now,
                           last_seen_utc=now)
    for n, paths in (("a", bound_paths[:1]), ("c", bound_paths)):
        assert send_files(orthancs[n].dicom_port, paths, called_ae=orthancs[n].ae_title,
                          calling_ae="STORESCU")[0].status == 0
    [merged] = client.search_for_studies(search_filters={"PatientID": "BOUNDSPLIT"}, fields=["00201208"])
    assert merged["00201208"]["Value"] == [2]
    # A query naming one bound study goes to its node: its instances, all of them.
    [(suid, _)] = [(s, p) for s, p in [write_study(cluster.tmp / "qido-one", count=3, patient_id="QIDO1")]]
    assert _stow(base, sorted((cluster.tmp / "qido-one").glob("*.dcm"))).status_code == 200
    assert len(client.search_for_instances(study_instance_uid=suid)) == 3


def _curl(url: str, *headers: str) -> tuple[str, bytes]:
    """A GET by curl: the answer's Content-Type and body."""
    done = subprocess.run(["curl", "-sS", "--fail", "-o", "-", "-w", "\n%{content_type}", *sum(
        (["-H", h] for h in headers), []), url], capture_output=True, timeout=60, check=True)
    body, _, kind = done.stdout.rpartition(b"\n")
    return kind.decode(), body


def _native_matches(kind: str, body: bytes) -> list[list[tuple]]:
    """The matches of a multipart/related XML answer, each as its attributes (tag, VR, and
    the text of every element below), whatever the indentation."""
    from email.parser import BytesParser

    from lxml import etree

    assert kind.startswith('multipart/related; type="application/dicom+xml"'), kind
    message = BytesParser().parsebytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
    matches = []
    for part in message.get_payload():
        assert part.get_content_type() == "application/dicom+xml"
        root = etree.fromstring(part.get_payload(decode=True))
        matches.append(sorted((a.get("tag"), a.get("vr"), a.get("keyword"),
                               tuple((e.tag.split("}")[1], (e.text or "").strip()) for e in a.iter() if e is not a))
                              for a in root))
    return matches


def test_qido_merged_answer_as_xml_is_what_the_node_answers_in_xml(pool):
    """Accept naming XML (and not JSON): the fanned-out answer is one Native DICOM Model
    document per match, as the node itself answers (its URLs naming SynthIQ); curl as the client."""
    cluster, _, orthancs, base, token = pool
    suid, paths = write_study(cluster.tmp / "qido-xml", count=2, patient_id="QIDOXML")
    assert _stow(base, paths).status_code == 200
    node = orthancs[binding_of(suid).removeprefix("node-")]
    auth = f"Authorization: Token {token}"
    for query in ("studies?PatientID=QIDOXML", f"instances?PatientID=QIDOXML&StudyInstanceUID={suid},1.2.3"):
        kind, through = _curl(f"{base}/{query}", "Accept: application/dicom+xml", auth)
        direct_kind, direct = _curl(f"{node.url}/dicom-web/{query}", "Accept: application/dicom+xml")
        host = base.removesuffix("/dicom-web")
        matches = _native_matches(kind, through.replace(host.encode(), node.url.encode()))
        assert len(matches) == (1 if query.startswith("studies") else 2)
        assert sorted(matches) == sorted(_native_matches(direct_kind, direct))
    # Both named, or JSON alone: JSON, as before; no match at all: an empty multipart.
    kind, body = _curl(f"{base}/studies?PatientID=QIDOXML", "Accept: application/dicom+xml, application/dicom+json",
                       auth)
    assert kind == "application/dicom+json" and json.loads(body)[0]["0020000D"]["Value"] == [suid]
    kind, body = _curl(f"{base}/studies?PatientID=NOBODY", "Accept: application/dicom+xml", auth)
    assert _native_matches(kind, body) == []


def _parts(response: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related response's parts (its own boundary)."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["Content-Type"]).group(1).encode()
    chunks = response.content.split(b"--" + boundary)[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for chunk in chunks]


def test_wado_of_a_study_series_metadata_and_frame_is_identical_to_asking_its_node(pool):
    cluster, _, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "wado", count=3, patient_id="WADO")
    assert _stow(base, paths).status_code == 200
    node = orthancs[binding_of(suid).removeprefix("node-")]
    first = dcmread(paths[0], stop_before_pixels=True)
    instance = f"studies/{suid}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}"
    dicom = 'multipart/related; type="application/dicom"'
    for path, accept, count in ((f"studies/{suid}", dicom, 3),
                                (f"studies/{suid}/series/{first.SeriesInstanceUID}", dicom, 3),
                                (f"{instance}/frames/1", 'multipart/related; type="application/octet-stream"', 1)):
        through = _session().get(f"{base}/{path}", headers={"Accept": accept}, timeout=30)
        direct = requests.get(f"{node.url}/dicom-web/{path}", headers={"Accept": accept}, timeout=30)
        assert through.status_code == direct.status_code == 200
        parts = _parts(through)
        assert len(parts) == count and parts == _parts(direct)
    through = _session().get(f"{base}/{instance}/metadata", timeout=30)
    direct = requests.get(f"{node.url}/dicom-web/{instance}/metadata", timeout=30)
    # Identical but for the URLs in it, which name SynthIQ (Forwarded) rather than the node.
    assert through.status_code == 200
    host = base.removesuffix("/dicom-web")
    assert through.content.replace(host.encode(), node.url.encode()) == direct.content
    # dicomweb-client reads the same study back.
    client = DICOMwebClient(url=base, session=_session())
    assert sorted(ds.SOPInstanceUID for ds in client.retrieve_study(suid)) == sorted(p.stem for p in paths)


def test_wado_of_an_unbound_study_is_served_by_the_node_that_holds_it(pool):
    from tests.harness import send_files

    cluster, _, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "unbound", count=1, patient_id="UNBOUND")
    assert send_files(orthancs["c"].dicom_port, paths, called_ae=orthancs["c"].ae_title,
                      calling_ae="STORESCU")[0].status == 0
    assert binding_of(suid) is None
    through = _session().get(f"{base}/studies/{suid}", timeout=30,
                             headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert through.status_code == 200 and len(_parts(through)) == 1
    assert _session().get(f"{base}/studies/1.2.3.999999", timeout=30).status_code == 404
    assert _session().get(f"{base}/studies/1.2.x", timeout=30).status_code == 400
    # A path that is not UIDs is refused before any backend sees it.
    assert _session().get(f"{base}/studies/1.2.x/series", timeout=30).status_code == 400
    assert _session().get(f"{base}/studies/{suid}/series/%2E%2E/instances", timeout=30).status_code == 400


# -- credentials --------------------------------------------------------------------------------

def test_with_stored_credentials_clients_must_authenticate(pool):
    _, _, _, base, token = pool
    assert requests.get(f"{base}/studies", timeout=10).status_code == 401
    wrong = base64.b64encode(f"{USER}:wrong".encode()).decode()
    answer = requests.get(f"{base}/studies", headers={"Authorization": f"Basic {wrong}"}, timeout=10)
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(f"{base}/studies", headers={"Authorization": "Token nope"}, timeout=10).status_code == 401
    assert requests.get(f"{base}/studies", headers={"Authorization": f"Token {token}x"}, timeout=10).status_code == 401
    assert requests.get(f"{base}/studies", headers={"Authorization": f"Token {token}"}, timeout=10).status_code == 200
    assert requests.get(f"{base}/studies", auth=(USER, PASSWORD), timeout=10).status_code == 200


def test_dicomweb_is_counted_by_service_in_metrics(pool):
    from prometheus_client.parser import text_string_to_metric_families

    from tests.harness import wait_for

    _, proxy, _, _, _ = pool

    def counted() -> dict[str, float] | None:
        text = requests.get(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=10).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "synthiq_operations_total" and s.labels.get("service", "").endswith("-RS"):
                    key = f"{s.labels['service']}/{s.labels['status_class']}"
                    totals[key] = totals.get(key, 0) + s.value
        wanted = ("STOW-RS/success", "STOW-RS/0xC0xx", "QIDO-RS/success", "WADO-RS/success")
        return totals if all(totals.get(k, 0) > 0 for k in wanted) else None

    wait_for(counted, timeout=15, what="the DICOMweb operations in /metrics")


def test_the_front_door_over_tls_without_stored_credentials(pool, tmp_path):
    """DicomWeb.Tls: HTTPS on the front door (a second runproxy on the same nodes, this pool
    with no stored credentials, so no SynthIQ login: the client's Authorization passes)."""
    from tests.routing.test_tls import _pki

    cluster, _, orthancs, _, _ = pool
    pki = _pki(tmp_path)
    backends = [{"Id": f"node-{n}", "AeTitle": o.ae_title, "Host": "127.0.0.1", "Port": o.dicom_port,
                 "Health": {"Mode": "liveness", "Probe": "echo"}, "DicomWebUrl": f"{o.url}/dicom-web"}
                for n, o in orthancs.items()]
    web_port = free_port()
    tls = {"Certificate": pki["proxy.pem"], "Key": pki["proxy.key"]}
    cluster.proxy(cluster.config(backends, HeartbeatTimeoutSeconds=600,
                                 pool={"DicomWeb": {"Port": web_port, "BasePath": "/web", "Tls": tls}}),
                  name="runproxy-tls")
    base = f"https://127.0.0.1:{web_port}/web"
    suid, paths = write_study(cluster.tmp / "tls", count=1, patient_id="TLS")
    session = requests.Session()
    session.verify, session.trust_env = pki["ca.pem"], False  # REQUESTS_CA_BUNDLE would win otherwise
    answer = _stow(base, paths, session=session)
    assert answer.status_code == 200, answer.text
    # The node builds its URLs from Forwarded (https, SynthIQ's host) and its own root, which
    # SynthIQ rewrites to its BasePath.
    assert _sequence(answer.json(), "00081199")[0]["00081190"]["Value"][0].startswith(f"{base}/studies/{suid}/")
    assert _holders(orthancs, suid) == {binding_of(suid): 1}
    assert session.get(f"{base}/studies?PatientID=TLS", timeout=10).json()[0]["0020000D"]["Value"] == [suid]
    # Metadata from the node: its bulk data URLs name SynthIQ's BasePath, and they work.
    [metadata] = session.get(f"{base}/studies/{suid}/metadata", timeout=10).json()
    bulk = metadata["7FE00010"]["BulkDataURI"]
    assert bulk.startswith(f"{base}/studies/{suid}/"), bulk
    assert session.get(bulk, timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{web_port}/web/studies", timeout=5)


# -- last: a node goes down ---------------------------------------------------------------------

def test_a_bound_study_whose_node_is_down_fails_and_never_goes_to_another_node(pool):
    cluster, _, orthancs, base, _ = pool
    suid, paths = write_study(cluster.tmp / "down", count=2, patient_id="DOWN")
    assert _stow(base, paths[:1]).status_code == 200
    bound = binding_of(suid)
    orthancs[bound.removeprefix("node-")].process.stop()
    answer = _stow(base, paths[1:])
    assert answer.status_code == 409, answer.text
    [failed] = _sequence(answer.json(), "00081198")
    assert failed["00081197"]["Value"] == [0xA700] and _sop(failed) == paths[1].stem
    assert binding_of(suid) == bound
    assert all(suid not in json.dumps(_holders({n: o}, suid)) for n, o in orthancs.items()
               if f"node-{n}" != bound)
    assert _session().get(f"{base}/studies/{suid}", timeout=30).status_code == 502
    # A query fanned out says which backend it did not hear from, and answers with the others'.
    answer = _session().get(f"{base}/studies", timeout=30)
    assert answer.status_code == 200 and f'299 SynthIQ "backend {bound} not reached' in answer.headers["Warning"]
    assert suid not in {s["0020000D"]["Value"][0] for s in answer.json()}
