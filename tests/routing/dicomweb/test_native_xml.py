"""DICOM JSON as the Native DICOM Model (PS3.19): values, person names, sequences, bulk
data, and a backend's hostile JSON (bad tags and VRs, characters XML cannot carry, deep
nesting) that never breaks the document."""

from __future__ import annotations

from email.parser import BytesParser

from lxml import etree

from routing.dicomweb.native_xml import MAX_DEPTH, NAMESPACE, native, native_multipart, wants_xml

NS = {"n": NAMESPACE}


def test_values_person_names_sequences_and_bulk_data():
    root = etree.fromstring(native({
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE^^DR", "Ideographic": "山田^太郎"}]},
        "00201208": {"vr": "IS", "Value": [150]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]},
        "7FE00010": {"vr": "OB", "BulkDataURI": "http://synthiq/bulk/7fe00010"},
        "00091001": {"vr": "OB", "InlineBinary": "AAEC"},
        "00080020": {"vr": "DA"},
    }))
    assert root.tag == f"{{{NAMESPACE}}}NativeDicomModel"
    name = root.find("n:DicomAttribute[@tag='00100010']/n:PersonName[@number='1']", NS)
    assert [(e.tag.split("}")[1], e.text) for e in name.find("n:Alphabetic", NS)] == [
        ("FamilyName", "DOE"), ("GivenName", "JANE"), ("NamePrefix", "DR")]
    assert name.find("n:Ideographic/n:GivenName", NS).text == "太郎"
    assert root.find("n:DicomAttribute[@keyword='NumberOfStudyRelatedInstances']/n:Value", NS).text == "150"
    assert [v.get("number") + v.text for v in root.iterfind("n:DicomAttribute[@tag='00080061']/n:Value", NS)] == [
        "1CT", "2MR"]
    assert root.find("n:DicomAttribute[@tag='00081199']/n:Item[@number='1']/n:DicomAttribute/n:Value", NS).text \
        == "1.2.3"
    assert root.find("n:DicomAttribute[@tag='7FE00010']/n:BulkData", NS).get("uri") == "http://synthiq/bulk/7fe00010"
    private = root.find("n:DicomAttribute[@tag='00091001']", NS)
    assert private.get("keyword") is None and private.find("n:InlineBinary", NS).text == "AAEC"
    assert len(root.find("n:DicomAttribute[@tag='00080020']", NS)) == 0  # present, empty


def test_a_backends_hostile_json_never_breaks_the_document():
    deep: dict = {"00100020": {"vr": "LO", "Value": ["bottom"]}}
    for _ in range(MAX_DEPTH + 10):
        deep = {"00081199": {"vr": "SQ", "Value": [deep]}}
    root = etree.fromstring(native({
        "../x": {"vr": "LO", "Value": ["bad tag"]}, "00100020": {"vr": "L<", "Value": ["bad vr"]},
        "00100030": "not an attribute", "00104000": {"vr": "LT", "Value": ["a\x00b\x1bc<d>&\ud800e", None, 3.5]},
        "00100010": {"vr": "PN", "Value": ["not an object", {"Alphabetic": 7}]}, **deep,
    }))
    assert [a.get("tag") for a in root.iterfind("n:DicomAttribute", NS)] == ["00081199", "00100010", "00104000"]
    assert [v.text for v in root.iterfind("n:DicomAttribute[@tag='00104000']/n:Value", NS)] == [
        "abc<d>&e", None, "3.5"]
    assert b"bottom" not in etree.tostring(root)  # nesting past MAX_DEPTH is cut


def test_a_multipart_of_one_document_per_match_and_none_for_no_match():
    body, kind = native_multipart([{"0020000D": {"vr": "UI", "Value": [f"1.2.{n}"]}} for n in range(3)])
    assert kind.startswith('multipart/related; type="application/dicom+xml"; boundary=')
    message = BytesParser().parsebytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["application/dicom+xml"] * 3
    assert [etree.fromstring(p.get_payload(decode=True)).find("n:DicomAttribute/n:Value", NS).text
            for p in parts] == ["1.2.0", "1.2.1", "1.2.2"]
    empty, kind = native_multipart([])
    assert empty == f"--{kind.rsplit('=', 1)[1]}--\r\n".encode()


def test_xml_only_when_the_client_names_it_and_not_json():
    assert wants_xml("application/dicom+xml")
    assert wants_xml('multipart/related; type="application/dicom+xml"')
    assert not wants_xml("application/dicom+xml, application/dicom+json")
    assert not wants_xml("application/json, application/dicom+xml;q=0.5")
    assert not wants_xml("") and not wants_xml("*/*") and not wants_xml('multipart/related; type="application/dicom"')
