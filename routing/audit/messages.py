"""DICOM PS3.15 A.5 audit messages, built with lxml: one function per event SynthIQ reports.

Pure: no sockets, no Django, no clock (the time of the event is passed in). Every value that
came from a peer (AE titles, addresses, UIDs, Patient IDs, user names) goes through
``_safe``: lxml escapes markup, and what XML cannot hold at all (control characters, lone
surrogates) becomes U+FFFD, so a hostile value can neither break the document nor the
syslog frame around it. The result is the XML on one line, UTF-8 encoded.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from lxml import etree  # type: ignore[import-untyped]  # no stubs shipped

# Coded values: (code, code system name, meaning).
Code = tuple[str, str, str]

APPLICATION_ACTIVITY: Code = ("110100", "DCM", "Application Activity")
BEGIN_TRANSFERRING: Code = ("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED: Code = ("110104", "DCM", "DICOM Instances Transferred")
QUERY: Code = ("110112", "DCM", "Query")
SECURITY_ALERT: Code = ("110113", "DCM", "Security Alert")
USER_AUTHENTICATION: Code = ("110114", "DCM", "User Authentication")

APPLICATION_START: Code = ("110120", "DCM", "Application Start")
APPLICATION_STOP: Code = ("110121", "DCM", "Application Stop")
LOGIN: Code = ("110122", "DCM", "Login")
LOGOUT: Code = ("110123", "DCM", "Logout")
NODE_AUTHENTICATION: Code = ("110126", "DCM", "Node Authentication")
SOFTWARE_CONFIGURATION: Code = ("110131", "DCM", "Software Configuration")
RESTRICTED_FUNCTION: Code = ("110132", "DCM", "Use of Restricted Function")
AUDIT_RECORDING_STOPPED: Code = ("110133", "DCM", "Audit Recording Stopped")
AUDIT_RECORDING_STARTED: Code = ("110134", "DCM", "Audit Recording Started")

ROLE_APPLICATION: Code = ("110150", "DCM", "Application")
ROLE_LAUNCHER: Code = ("110151", "DCM", "Application Launcher")
ROLE_DESTINATION: Code = ("110152", "DCM", "Destination Role ID")
ROLE_SOURCE: Code = ("110153", "DCM", "Source Role ID")

ID_STUDY: Code = ("110180", "DCM", "Study Instance UID")
ID_SOP_CLASS: Code = ("110181", "DCM", "SOP Class UID")
ID_NODE: Code = ("110182", "DCM", "Node ID")
ID_PATIENT: Code = ("2", "RFC-3881", "Patient Number")
ID_URI: Code = ("12", "RFC-3881", "URI")

# EventOutcomeIndicator values.
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"
# AuditSourceTypeCode 4: an application server process.
SOURCE_TYPE_APPLICATION_SERVER = "4"

# What XML 1.0 cannot carry at all: C0 controls but tab, LF and CR (those become spaces,
# so an attribute or a text never spans lines), lone surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_LINE_BREAKS = re.compile("[\t\n\r]")


def _safe(value: object) -> str:
    return _LINE_BREAKS.sub(" ", _NOT_XML.sub("\ufffd", str(value)))


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode("utf-8", "replace") if isinstance(value, str) else value).decode("ascii")


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a DICOM node (AE title and address), a process, or a person."""

    user_id: str
    requestor: bool = False
    role: Code | None = None
    ae_titles: Sequence[str] = ()
    address: str = ""
    user_name: str = ""

    @classmethod
    def node(cls, *, ae_title: str, address: str, role: Code | None = None, requestor: bool = False) -> Participant:
        return cls(user_id=ae_title, requestor=requestor, role=role, ae_titles=(ae_title,), address=address)


@dataclass(frozen=True)
class Source:
    """AuditSourceIdentification: this host (its FQDN) and the site, if configured."""

    source_id: str
    site_id: str | None = None


def _code(parent: etree._Element, tag: str, code: Code) -> etree._Element:
    return etree.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]})


def _message(*, event: Code, outcome: str, when: dt.datetime, source: Source, participants: Iterable[Participant],
             action: str = "E", event_types: Sequence[Code] = (), description: str = "",
             objects: Iterable[etree._Element] = ()) -> bytes:
    root = etree.Element("AuditMessage")
    ident = etree.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": when.astimezone(dt.UTC).isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": outcome})
    _code(ident, "EventID", event)
    for code in event_types:
        _code(ident, "EventTypeCode", code)
    if description:
        etree.SubElement(ident, "EventOutcomeDescription").text = _safe(description)
    for p in participants:
        attrs = {"UserID": _safe(p.user_id) or "-", "UserIsRequestor": "true" if p.requestor else "false"}
        if p.ae_titles:
            attrs["AlternativeUserID"] = "AETITLES=" + ";".join(_safe(ae) for ae in p.ae_titles)
        if p.user_name:
            attrs["UserName"] = _safe(p.user_name)
        if p.address:
            attrs["NetworkAccessPointID"] = _safe(p.address)
            attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(p.address) else "1"
        element = etree.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _code(element, "RoleIDCode", p.role)
    src = etree.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": _safe(source.source_id)})
    if source.site_id:
        src.set("AuditEnterpriseSiteID", _safe(source.site_id))
    etree.SubElement(src, "AuditSourceTypeCode", {"csd-code": SOURCE_TYPE_APPLICATION_SERVER})
    root.extend(objects)
    return bytes(etree.tostring(root, encoding="utf-8"))


def _is_ip(address: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:.%]*:[0-9A-Fa-f:.%]*", address))


def _object(*, id_type: Code, object_id: str, type_code: str, role: str, name: str = "", query: bytes | None = None,
            details: Sequence[tuple[str, str | bytes]] = ()) -> etree._Element:
    element = etree.Element("ParticipantObjectIdentification", {
        "ParticipantObjectID": _safe(object_id) or "-", "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role})
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    if query is not None:
        etree.SubElement(element, "ParticipantObjectQuery").text = _b64(query)
    else:  # the schema asks for a name or a query
        etree.SubElement(element, "ParticipantObjectName").text = _safe(name or object_id) or "-"
    for kind, value in details:
        etree.SubElement(element, "ParticipantObjectDetail", {"type": kind, "value": _b64(value)})
    return element


def patient(*, patient_id: str, name: str = "") -> etree._Element:
    """The Patient participant object (type 1 person, role 1 patient): its Patient ID."""
    return _object(id_type=ID_PATIENT, object_id=patient_id, type_code="1", role="1", name=name)


def study(*, study_uid: str, sop_classes: dict[str, int] | None = None) -> etree._Element:
    """A study participant object (type 2 system object, role 3 report), with the SOP
    classes and instance counts when known."""
    element = _object(id_type=ID_STUDY, object_id=study_uid, type_code="2", role="3")
    if sop_classes:
        description = etree.SubElement(element, "ParticipantObjectDescription")
        for uid, count in sorted(sop_classes.items()):
            etree.SubElement(description, "SOPClass", {"UID": _safe(uid), "NumberOfInstances": str(int(count))})
    return element


def _alert_subject(*, subject: str, text: str, id_type: Code = ID_NODE) -> etree._Element:
    return _object(id_type=id_type, object_id=subject, type_code="2", role="13",
                   details=[("Alert Description", text)])


# -- the events ------------------------------------------------------------------------------


def application_activity(*, when: dt.datetime, source: Source, started: bool, application: str, version: str,
                         ae_titles: Sequence[str], launcher: str = "", outcome: str = SUCCESS) -> bytes:
    """110100 with 110120 Application Start or 110121 Application Stop; the version in UserName."""
    participants = [Participant(user_id=application, role=ROLE_APPLICATION, ae_titles=tuple(ae_titles),
                                user_name=f"SynthIQ {version}")]
    if launcher:
        participants.append(Participant(user_id=launcher, requestor=True, role=ROLE_LAUNCHER))
    return _message(event=APPLICATION_ACTIVITY, outcome=outcome, when=when, source=source,
                    event_types=[APPLICATION_START if started else APPLICATION_STOP], participants=participants)


def instances_transferred(*, when: dt.datetime, source: Source, sender: Participant, receiver: Participant,
                          relay: Participant, study_uid: str, sop_classes: dict[str, int], patient_id: str,
                          patient_name: str = "", outcome: str = SUCCESS, description: str = "") -> bytes:
    """110104, EventActionCode "R": SynthIQ passed the instances on (it is not the receiver).
    The sender is the source (and requestor), the backend the destination."""
    return _message(event=INSTANCES_TRANSFERRED, action="R", outcome=outcome, when=when, source=source,
                    description=description,
                    participants=[replace(sender, role=ROLE_SOURCE, requestor=True),
                                  replace(receiver, role=ROLE_DESTINATION), relay],
                    objects=[study(study_uid=study_uid, sop_classes=sop_classes),
                             patient(patient_id=patient_id, name=patient_name)])


def query(*, when: dt.datetime, source: Source, requestor: Participant, responder: Participant, sop_class_uid: str,
          identifier: bytes, transfer_syntax: str, outcome: str = SUCCESS, description: str = "") -> bytes:
    """110112: the query data set itself, base64 in ParticipantObjectQuery, with its
    transfer syntax as a ParticipantObjectDetail (PS3.15 A.5.3.10)."""
    query_object = _object(id_type=ID_SOP_CLASS, object_id=sop_class_uid, type_code="2", role="3",
                           query=identifier, details=[("TransferSyntax", transfer_syntax)])
    return _message(event=QUERY, outcome=outcome, when=when, source=source, description=description,
                    participants=[replace(requestor, role=ROLE_SOURCE, requestor=True),
                                  replace(responder, role=ROLE_DESTINATION)],
                    objects=[query_object])


def web_query(*, when: dt.datetime, source: Source, requestor: Participant, responder: Participant, resource: str,
              query: str, outcome: str = SUCCESS, description: str = "") -> bytes:
    """110112 for QIDO-RS: no SOP class and no data set to name, so the object is the
    resource queried (its URL path, as a URI) and ParticipantObjectQuery the query string
    itself, base64, with its encoding as a ParticipantObjectDetail (PS3.15 A.5.3.10 leaves
    a non-DIMSE query to be named so)."""
    query_object = _object(id_type=ID_URI, object_id=resource, type_code="2", role="3",
                           query=query.encode("utf-8", "replace"), details=[("QueryEncoding", "UTF-8")])
    return _message(event=QUERY, outcome=outcome, when=when, source=source, description=description,
                    participants=[replace(requestor, role=ROLE_SOURCE, requestor=True),
                                  replace(responder, role=ROLE_DESTINATION)],
                    objects=[query_object])


def begin_transferring(*, when: dt.datetime, source: Source, requestor: Participant, sender: Participant,
                       receiver: Participant, study_uids: Sequence[str], patient_id: str = "",
                       outcome: str = SUCCESS, description: str = "") -> bytes:
    """110102 for a C-MOVE or C-GET: the backend sends, the move destination (or, for a
    C-GET, the requestor itself) receives."""
    objects = [study(study_uid=uid) for uid in study_uids]
    if patient_id:
        objects.append(patient(patient_id=patient_id))
    participants = [requestor] if requestor.user_id != receiver.user_id else []
    participants += [replace(sender, role=ROLE_SOURCE),
                     replace(receiver, role=ROLE_DESTINATION,
                             requestor=receiver.requestor or not participants)]
    return _message(event=BEGIN_TRANSFERRING, outcome=outcome, when=when, source=source, description=description,
                    participants=participants, objects=objects)


def security_alert(*, when: dt.datetime, source: Source, kind: Code, reporter: Participant, subject: str, text: str,
                   performer: Participant | None = None, outcome: str = MINOR_FAILURE,
                   subject_type: Code = ID_NODE) -> bytes:
    """110113 of ``kind`` (110126, 110131, 110132, 110133, 110134): who reports it, who
    caused it when known, and the alert subject (a node by default; a file as a URI) with a
    description."""
    participants = [reporter] + ([performer] if performer is not None else [])
    return _message(event=SECURITY_ALERT, outcome=outcome, when=when, source=source, event_types=[kind],
                    description=text, participants=participants,
                    objects=[_alert_subject(subject=subject, text=text, id_type=subject_type)])


def user_authentication(*, when: dt.datetime, source: Source, login: bool, user: str, address: str,
                        system: Participant, outcome: str = SUCCESS, description: str = "") -> bytes:
    """110114 with 110122 Login or 110123 Logout: the person, from where, and the
    authenticating system."""
    person = Participant(user_id=user, requestor=True, address=address, user_name=user)
    return _message(event=USER_AUTHENTICATION, outcome=outcome, when=when, source=source,
                    event_types=[LOGIN if login else LOGOUT], description=description, participants=[person, system])
