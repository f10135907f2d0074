"""DICOM JSON (PS3.18 F.2) as the Native DICOM Model (PS3.19 A.1), for a client whose Accept
names application/dicom+xml and not JSON: the STOW-RS store response, and each match of a
merged QIDO-RS answer (one part each of a multipart/related answer, as PS3.18 10.6.3.3.1
asks and Orthanc's plugin answers).

The JSON comes from backends: untrusted. An attribute whose tag or VR is not well-formed is
left out, and characters XML cannot carry are dropped (lxml escapes the rest).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from lxml import etree
from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
XML_TYPE = "application/dicom+xml"
JSON_TYPES = ("application/dicom+json", "application/json")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_VR = re.compile(r"^[A-Z]{2}$")
# Characters XML 1.0 cannot carry (controls but tab/newline/return, lone surrogates, U+FFFE/F).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
PERSON_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
PERSON_NAME_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
MAX_DEPTH = 32  # nested sequences followed, at most


def wants_xml(accept: str) -> bool:
    """Whether the client asked for XML rather than JSON (the default: JSON when both, or
    neither, are named). ``multipart/related; type="application/dicom+xml"`` counts as XML."""
    kinds = []
    for entry in accept.lower().split(","):
        kind, _, params = entry.strip().partition(";")
        kinds.append(kind.strip())
        if kind.strip() == "multipart/related" and XML_TYPE in params:
            kinds.append(XML_TYPE)
    return XML_TYPE in kinds and not any(kind in kinds for kind in JSON_TYPES)


def native(dataset: dict[str, Any]) -> bytes:
    """One data set as a NativeDicomModel document."""
    root = etree.Element("NativeDicomModel", nsmap={None: NAMESPACE})
    _into(root, dataset, 0)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def native_multipart(datasets: list[dict[str, Any]]) -> tuple[bytes, str]:
    """Data sets as a multipart/related body of application/dicom+xml parts, and its
    Content-Type (no part at all when there is no data set, as Orthanc's plugin answers)."""
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Type: {XML_TYPE}\r\n\r\n".encode() + native(d) + b"\r\n" for d in datasets]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{XML_TYPE}"; boundary={boundary}'


def _text(value: Any) -> str:
    return _NOT_XML.sub("", value if isinstance(value, str) else str(value))


def _into(parent: etree._Element, dataset: dict[str, Any], depth: int) -> None:
    for tag in sorted(t for t in dataset if isinstance(t, str) and _TAG.match(t)):
        attribute = dataset[tag]
        vr = attribute.get("vr") if isinstance(attribute, dict) else None
        if not isinstance(vr, str) or not _VR.match(vr):
            continue
        element = etree.SubElement(parent, "DicomAttribute", tag=tag.upper(), vr=vr)
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            element.set("keyword", keyword)
        _values(element, attribute, vr, depth)


def _values(element: etree._Element, attribute: dict[str, Any], vr: str, depth: int) -> None:
    values = attribute.get("Value")
    if isinstance(values, list):
        for number, value in enumerate(values, start=1):
            if vr == "SQ":
                item = etree.SubElement(element, "Item", number=str(number))
                if isinstance(value, dict) and depth < MAX_DEPTH:
                    _into(item, value, depth + 1)
            elif vr == "PN":
                _person_name(etree.SubElement(element, "PersonName", number=str(number)), value)
            else:
                node = etree.SubElement(element, "Value", number=str(number))
                if value is not None:
                    node.text = _text(value)
    elif isinstance(attribute.get("InlineBinary"), str):
        etree.SubElement(element, "InlineBinary").text = _text(attribute["InlineBinary"])
    elif isinstance(attribute.get("BulkDataURI"), str):
        etree.SubElement(element, "BulkData", uri=_text(attribute["BulkDataURI"]))


def _person_name(element: etree._Element, value: Any) -> None:
    """A PN value: its groups, each split into its components (PS3.19 A.1.5)."""
    if not isinstance(value, dict):
        return
    for group in PERSON_NAME_GROUPS:
        name = value.get(group)
        if not isinstance(name, str):
            continue
        node = etree.SubElement(element, group)
        for part, text in zip(PERSON_NAME_PARTS, name.split("^"), strict=False):
            if text:
                etree.SubElement(node, part).text = _text(text)
