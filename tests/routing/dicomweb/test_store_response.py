"""The merged STOW-RS store response: only what a backend says about what it was sent,
every unanswered instance failed, the status from the merged lists (never a false success)."""

from __future__ import annotations

import json

from routing.dicomweb.store_response import PROCESSING_FAILURE, Sent, StoreResponse

CT = "1.2.840.10008.5.1.4.1.1.2"


def _item(uid: str, **extra) -> dict:
    return {"00081150": {"vr": "UI", "Value": [CT]}, "00081155": {"vr": "UI", "Value": [uid]}} | extra


def _answer(referenced=(), failed=(), url=None) -> bytes:
    body: dict = {"00081199": {"vr": "SQ", "Value": list(referenced)}, "00081198": {"vr": "SQ", "Value": list(failed)}}
    if url:
        body["00081190"] = {"vr": "UR", "Value": [url]}
    return json.dumps(body).encode()


def test_all_stored_is_200_with_the_backend_urls_under_synthiqs_base_path():
    response = StoreResponse()
    url = "http://proxy:8080/orthanc/dicom-web/studies/1.2/series/1.3/instances/1.4"
    problems = response.merge(answer=_answer([_item("1.4", **{"00081190": {"vr": "UR", "Value": [url]}})],
                                             url="http://proxy:8080/orthanc/dicom-web/studies/1.2"),
                              sent=[Sent(CT, "1.4")],
                              rewrite=("http://proxy:8080/orthanc/dicom-web", "http://proxy:8080/dicom-web"))
    assert problems == [] and response.http_status == 200
    body = json.loads(response.body())
    assert body["00081190"]["Value"] == ["http://proxy:8080/dicom-web/studies/1.2"]
    assert body["00081199"]["Value"][0]["00081190"]["Value"] == [
        "http://proxy:8080/dicom-web/studies/1.2/series/1.3/instances/1.4"]


def test_an_instance_the_backend_does_not_answer_for_is_failed_and_claims_about_others_are_ignored():
    response = StoreResponse()
    # The backend claims an instance nobody sent it, and says nothing of 1.5.
    problems = response.merge(answer=_answer([_item("1.4"), _item("9.9.9")]), sent=[Sent(CT, "1.4"), Sent(CT, "1.5")])
    assert problems == ["1 instance(s) it did not answer for"] and response.http_status == 202
    assert [i["00081155"]["Value"] for i in response.referenced] == [["1.4"]]
    assert response.failed == [_item("1.5", **{"00081197": {"vr": "US", "Value": [PROCESSING_FAILURE]}})]


def test_an_answer_that_is_not_json_fails_everything_sent_and_none_stored_is_409():
    response = StoreResponse()
    assert response.merge(answer=b"<html>proxy error</html>", sent=[Sent(CT, "1.4")])[0] == "its answer is not JSON"
    assert response.http_status == 409 and len(response.failed) == 1


def test_a_warning_makes_it_202_and_own_failures_carry_only_valid_uids():
    response = StoreResponse()
    response.merge(answer=_answer([_item("1.4", **{"00081196": {"vr": "US", "Value": [0xB000]}})]),
                   sent=[Sent(CT, "1.4")])
    assert response.http_status == 202
    response.fail(sop_class_uid=CT, sop_instance_uid="1.2.x", reason=0xC000)
    assert response.failed[-1] == {"00081150": {"vr": "UI", "Value": [CT]}, "00081197": {"vr": "US", "Value": [0xC000]}}


def test_the_xml_response_holds_the_same_items_in_the_native_dicom_model():
    from xml.etree import ElementTree

    from routing.dicomweb.native_xml import wants_xml

    response = StoreResponse()
    response.merge(answer=_answer([_item("1.4")]), sent=[Sent(CT, "1.4")])
    response.fail(sop_class_uid=CT, sop_instance_uid="1.5", reason=0xA700)
    root = ElementTree.fromstring(response.xml())
    ns = {"n": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    stored = root.find("n:DicomAttribute[@keyword='ReferencedSOPSequence']", ns)
    failed = root.find("n:DicomAttribute[@keyword='FailedSOPSequence']", ns)
    assert [v.text for v in stored.iterfind(".//n:DicomAttribute[@tag='00081155']/n:Value", ns)] == ["1.4"]
    assert [v.text for v in failed.iterfind(".//n:DicomAttribute[@keyword='FailureReason']/n:Value", ns)] == [
        str(0xA700)]
    assert wants_xml("application/dicom+xml") and not wants_xml("application/dicom+json, application/dicom+xml")
    assert not wants_xml("") and not wants_xml("*/*")
