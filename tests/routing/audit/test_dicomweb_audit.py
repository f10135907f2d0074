"""The audit trail of the DICOMweb front door: STOW-RS, QIDO-RS and WADO-RS through a running
SynthIQ (one real Orthanc with its DICOMweb plugin behind it, a client authenticated by an
API token) arrive at a real rsyslog over TLS as PS3.15 messages that validate, naming the
user and its address, the backend, the study and the Patient."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from routing.simulators.synthetic import write_study
from tests.harness import Cluster, ProxyHandle, clean_database, free_port, orthanc_dicomweb_plugin, start_orthanc
from tests.routing.audit.test_audit_trail import HOSTILE_PATIENT_ID, Repository, assert_valid, start_repository
from tests.routing.test_dicomweb import _stow

USER, PASSWORD = "dicomweb-auditee", "a-long-test-password"


@dataclass
class WebSite:
    repo: Repository
    proxy: ProxyHandle
    base: str
    orthanc_url: str
    tmp: Path
    session: requests.Session


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[WebSite]:
    """rsyslog, one Orthanc (DICOMweb plugin), and runproxy whose pool has DICOMweb with
    stored backend credentials (so the client authenticates to SynthIQ: its user name is known)."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    clean_database()
    user = User.objects.create_user(USER, password=PASSWORD)
    token, _ = Token.objects.get_or_create(user=user)
    tmp = tmp_path_factory.mktemp("audit-dicomweb")
    repo = start_repository(tmp)
    cluster = Cluster(tmp=tmp, env=dict(os.environ))
    try:
        orthanc = start_orthanc(cluster, name="orthanc-web", DicomAet="ORTHANCWEB", Plugins=[orthanc_dicomweb_plugin()])
        backend = {"Id": "node-web", "AeTitle": orthanc.ae_title, "Host": "127.0.0.1", "Port": orthanc.dicom_port,
                   "Health": {"Mode": "liveness", "Probe": "echo"}, "DicomWebUrl": f"{orthanc.url}/dicom-web",
                   "DicomWebUsername": "orthanc", "DicomWebPassword": "unused-by-this-orthanc"}
        web_port = free_port()
        config = cluster.config([backend], HeartbeatTimeoutSeconds=600, Audit=repo.tls_config(),
                                pool={"DicomWeb": {"Port": web_port}})
        proxy = cluster.proxy(config, extra_env={"SYNTHIQ_LOG_PATIENT_ID": "0"})
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token.key}"
        yield WebSite(repo, proxy, f"http://127.0.0.1:{web_port}/dicom-web", f"{orthanc.url}/dicom-web", tmp, session)
    finally:
        cluster.stop_all()
        repo.stop()


def _by_role(message) -> dict[str, dict[str, str]]:
    return {p["role"]: p for p in message.participants()}


def _assert_the_user(participant: dict[str, str]) -> None:
    assert participant["UserID"] == USER and participant["UserName"] == USER
    assert participant["NetworkAccessPointID"] == "127.0.0.1" and participant["UserIsRequestor"] == "true"


def test_stow_is_one_instances_transferred_message_per_study_of_the_request(web, schema):
    study_a, paths_a = write_study(web.tmp / "a", count=2, patient_id=HOSTILE_PATIENT_ID)
    study_b, paths_b = write_study(web.tmp / "b", count=1, patient_id="PATIENT-B")
    answer = _stow(web.base, paths_a + paths_b, session=web.session)
    assert answer.status_code == 200, answer.text
    for study, patient_id, count in ((study_a, HOSTILE_PATIENT_ID, "2"), (study_b, "PATIENT-B", "1")):
        (message,) = web.repo.wait(lambda m, s=study: m.event == "110104" and s.encode() in m.raw, what="110104")
        assert_valid(schema, message)
        assert message.xml.find("EventIdentification").get("EventActionCode") == "R"
        assert message.outcome == "0"
        by_role = _by_role(message)
        _assert_the_user(by_role["110153"])
        assert by_role["110152"]["UserID"] == web.orthanc_url
        assert by_role["110152"]["NetworkAccessPointID"] == "127.0.0.1"
        (study_object,) = message.objects("110180")
        assert study_object.get("ParticipantObjectID") == study
        (sop_class,) = study_object.findall("ParticipantObjectDescription/SOPClass")
        assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (CTImageStorage, count)
        (patient,) = message.objects("2")
        assert patient.get("ParticipantObjectID") == patient_id
    assert HOSTILE_PATIENT_ID not in web.proxy.process.log()  # SYNTHIQ_LOG_PATIENT_ID=0


def test_a_stow_part_the_backend_cannot_store_makes_the_outcome_a_minor_failure(web, schema):
    """A part cut short (Orthanc stores the others and not it): outcome 4, and how many failed."""
    study, paths = write_study(web.tmp / "partly", count=3, patient_id="PARTLY")
    paths[1].write_bytes(paths[1].read_bytes()[:-3000])
    assert _stow(web.base, paths, session=web.session).status_code == 202
    (message,) = web.repo.wait(lambda m: m.event == "110104" and study.encode() in m.raw, what="110104")
    assert_valid(schema, message)
    assert message.outcome == "4"
    assert message.xml.findtext("EventIdentification/EventOutcomeDescription").startswith("1 of 3 instance(s) failed")
    (sop_class,) = message.objects("110180")[0].findall("ParticipantObjectDescription/SOPClass")
    assert sop_class.get("NumberOfInstances") == "3"  # sent: the outcome says what became of them


def test_qido_is_a_query_message_with_the_query_string(web, schema):
    query = "PatientID=QUERY-ME&includefield=00081030"
    answer = web.session.get(f"{web.base}/studies?{query}", timeout=30)
    assert answer.status_code in (200, 204)

    def asked(m) -> bool:
        objects = m.objects("12") if m.event == "110112" else []
        return bool(objects) and base64.b64decode(objects[0].findtext("ParticipantObjectQuery")) == query.encode()
    (message,) = web.repo.wait(asked, what="110112 of QIDO-RS")
    assert_valid(schema, message)
    assert message.outcome == "0"
    _assert_the_user(_by_role(message)["110153"])
    (resource,) = message.objects("12")
    assert resource.get("ParticipantObjectID") == "/dicom-web/studies"
    assert base64.b64decode(resource.find("ParticipantObjectDetail").get("value")) == b"UTF-8"


def test_wado_is_a_begin_transferring_message_from_the_backend_to_the_client(web, schema):
    study, paths = write_study(web.tmp / "wado", count=1, patient_id="WADO")
    assert _stow(web.base, paths, session=web.session).status_code == 200
    answer = web.session.get(f"{web.base}/studies/{study}/metadata", timeout=30)
    assert answer.status_code == 200
    (message,) = web.repo.wait(lambda m: m.event == "110102" and study.encode() in m.raw, what="110102")
    assert_valid(schema, message)
    assert message.outcome == "0"
    by_role = _by_role(message)
    assert by_role["110153"]["UserID"] == web.orthanc_url  # the backend sends
    _assert_the_user(by_role["110152"])  # to the client, which asked
    assert [o.get("ParticipantObjectID") for o in message.objects("110180")] == [study]
    assert f"/dicom-web/studies/{study}/metadata" in message.xml.findtext(
        "EventIdentification/EventOutcomeDescription")
