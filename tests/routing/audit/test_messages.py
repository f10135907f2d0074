"""The audit messages and their framing, in process: every builder validates against the
PS3.15 schema, hostile values from peers are escaped and never break the XML or the syslog
frame, and the spool keeps frames bounded, in order, owner-only."""

from __future__ import annotations

import datetime as dt
import re
import stat
import time

import pytest
from lxml import etree

from routing.audit import messages as m
from routing.audit.transport import BOM, Spool, octet_counted, syslog_message

WHEN = dt.datetime(2026, 12, 7, 4, 0, 0, 123456, tzinfo=dt.UTC)
SOURCE = m.Source(source_id="synthiq.example.org", site_id="SITE-1")
# What a hostile peer may put in an AE title, a UID or a Patient ID: markup, quotes, line
# feeds (a syslog line break), NULs and other controls, a lone surrogate.
HOSTILE = 'X<a href="y">&amp;\n<85>1 - \x00\x07\r\ud800'
MODALITY = m.Participant.node(ae_title=HOSTILE[:16], address="192.0.2.7")
BACKEND = m.Participant.node(ae_title="PACS1", address="pacs1.example.org")


def _all_messages() -> dict[str, bytes]:
    return {
        "110100": m.application_activity(when=WHEN, source=SOURCE, started=True, application="SynthIQ@host",
                                         version="0.2.0", ae_titles=["SYNTHIQ", "SYNTHIQ2"], launcher="synthiq"),
        "110104": m.instances_transferred(when=WHEN, source=SOURCE, sender=MODALITY, receiver=BACKEND,
                                          relay=m.Participant(user_id="SynthIQ@host"), study_uid=HOSTILE,
                                          sop_classes={"1.2.840.10008.5.1.4.1.1.2": 3, HOSTILE: 1},
                                          patient_id=HOSTILE, patient_name=HOSTILE, outcome=m.MINOR_FAILURE,
                                          description="1 of 4 instance(s) failed"),
        "110112": m.query(when=WHEN, source=SOURCE, requestor=MODALITY, responder=BACKEND,
                          sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1", identifier=b"\x08\x00R\x00\x06\x00STUDY ",
                          transfer_syntax="1.2.840.10008.1.2.1"),
        "110112-qido": m.web_query(when=WHEN, source=SOURCE, requestor=m.Participant(user_id=HOSTILE, address="::1"),
                                   responder=BACKEND, resource=f"/dicom-web/studies/{HOSTILE}",
                                   query=f"PatientID={HOSTILE}&limit=10"),
        "110102": m.begin_transferring(when=WHEN, source=SOURCE, requestor=MODALITY, sender=BACKEND,
                                       receiver=m.Participant(user_id="WORKSTATION"), study_uids=["1.2.3", HOSTILE],
                                       patient_id=HOSTILE),
        "110113": m.security_alert(when=WHEN, source=SOURCE, kind=m.NODE_AUTHENTICATION, reporter=BACKEND,
                                   performer=MODALITY, subject="192.0.2.7", text=HOSTILE),
        "110114": m.user_authentication(when=WHEN, source=SOURCE, login=False, user=HOSTILE, address="::1",
                                        system=BACKEND, outcome=m.MINOR_FAILURE),
    }


@pytest.mark.parametrize("event", ["110100", "110104", "110112", "110112-qido", "110102", "110113", "110114"])
def test_each_message_validates_and_stays_on_one_line_whatever_the_peer_sent(schema, event):
    xml = _all_messages()[event]
    assert b"\n" not in xml and b"\r" not in xml
    document = etree.fromstring(xml)
    assert schema.validate(document), schema.error_log
    assert document.find("EventIdentification/EventID").get("csd-code") == event.split("-")[0]
    assert document.find("AuditSourceIdentification").get("AuditSourceID") == "synthiq.example.org"
    assert b"<a href" not in xml  # markup from a peer is text, never elements


def test_a_hostile_patient_id_is_kept_escaped_with_what_xml_cannot_hold_replaced(schema):
    document = etree.fromstring(_all_messages()["110104"])
    patient = next(o for o in document.findall("ParticipantObjectIdentification")
                   if o.get("ParticipantObjectTypeCodeRole") == "1")
    assert patient.get("ParticipantObjectID") == 'X<a href="y">&amp; <85>1 - \ufffd\ufffd \ufffd'


def test_the_syslog_message_is_rfc_5424_and_the_frame_counts_its_octets():
    xml = _all_messages()["110104"]
    message = syslog_message(xml, when=WHEN, hostname="synthiq.example.org", procid=4242)
    assert message.startswith(b"<85>1 2026-12-07T04:00:00.123456Z synthiq.example.org SynthIQ 4242 IHE+RFC-3881 - "
                              + BOM + b"<AuditMessage>")
    frame = octet_counted(message)
    count, _, rest = frame.partition(b" ")
    assert int(count) == len(rest) == len(message) and rest == message
    assert re.fullmatch(rb"[^\n]*", message)  # one line: a line-based receiver cannot be split


def test_the_spool_is_owner_only_bounded_and_read_back_in_order(tmp_path):
    spool = Spool(tmp_path / "audit" / "main.spool", limit=100)
    frames = [octet_counted(f"message {n}".encode()) for n in range(20)]
    kept = [f for f in frames if spool.append(f)]
    assert 0 < len(kept) < len(frames) and spool.size <= 100  # the bound holds
    assert spool.append(frames[-1], reserved=True)  # the drop alerts go in all the same
    assert stat.S_IMODE(spool.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.path.parent.stat().st_mode) == 0o700
    read = list(spool.frames())
    assert [f for f, _ in read] == [*kept, frames[-1]]
    spool.sent_up_to(read[1][1])  # two sent, then the connection failed
    spool.close()
    again = Spool(tmp_path / "audit" / "main.spool", limit=100)  # a restart sends the rest, not the first two
    assert [f for f, _ in again.frames()] == [*kept[2:], frames[-1]]
    again.sent_up_to(list(again.frames())[-1][1])
    assert not again.pending and again.path.stat().st_size == 0


def test_udp_drops_are_counted_and_audited_once_a_datagram_goes_through_again(tmp_path, schema):
    """A repository port that refuses datagrams (ICMP port unreachable): messages are dropped
    and counted; once one goes through, 110133 and 110134 follow with the count."""
    import socket

    from routing.audit.trail import AuditTrail, TrailSettings
    from tests.harness import free_port, wait_for

    port = free_port()
    trail = AuditTrail(TrailSettings(transport="udp", host="127.0.0.1", port=port, tls=None, site_id=None,
                                     spool_path=tmp_path / "unused.spool", spool_limit=1 << 20, queue_size=100),
                       hostname="synthiq.example.org").start()
    receiver = None
    try:
        for _ in range(4):
            trail.user_authentication(login=True, user="someone", address="127.0.0.1", success=False)
            time.sleep(0.05)  # the refusal (ICMP) comes back between two datagrams
        wait_for(lambda: trail.stats()["dropped"] >= 2, timeout=5, what="drops")
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", port))
        receiver.settimeout(5)
        trail.user_authentication(login=False, user="someone", address="127.0.0.1", success=True)
        received = [receiver.recv(65535) for _ in range(3)]
    finally:
        trail.stop()
        if receiver is not None:
            receiver.close()
    dropped = trail.stats()["dropped"]
    documents = [etree.fromstring(r.split(BOM, 1)[1]) for r in received]
    kinds = [[c.get("csd-code") for c in d.findall("EventIdentification/EventTypeCode")] for d in documents]
    assert kinds == [["110123"], ["110133"], ["110134"]]
    counts = set()
    for document in documents[1:]:
        assert schema.validate(document), schema.error_log
        text = document.findtext("EventIdentification/EventOutcomeDescription")
        counts.add(int(re.match(r"(\d+) audit message\(s\) dropped since ", text).group(1)))
    # UDP to a refusing port alternates: a send goes out, the next one gets the refusal. A
    # report sent in between was itself lost (and counted): this one covers the drops since.
    (count,) = counts
    assert 1 <= count <= dropped and dropped >= 2


def test_audit_off_answers_every_call_the_trail_has_with_nothing():
    """The relay calls ``telemetry.audit.<event>`` whether audit is on or not."""
    from routing.audit.trail import NULL_TRAIL, AuditTrail

    public = [name for name in vars(AuditTrail) if not name.startswith("_") and callable(getattr(AuditTrail, name))]
    assert {"stored", "association_ended", "query_retrieve", "rejected", "reloaded"} <= set(public)
    for name in public:
        assert name in vars(type(NULL_TRAIL)), name  # a class attribute, not a __getattr__ fallback
        if name != "stats":
            assert getattr(NULL_TRAIL, name)(object(), "x", k=1) is None
    assert NULL_TRAIL.stats() == {}


def test_a_huge_query_is_audited_cut_to_a_size_a_repository_takes(tmp_path, schema):
    import base64
    import socket
    from types import SimpleNamespace

    from routing.audit.trail import QUERY_AUDIT_BYTES, AuditTrail, TrailSettings

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    trail = AuditTrail(TrailSettings(transport="udp", host="127.0.0.1", port=receiver.getsockname()[1], tls=None,
                                     site_id=None, spool_path=tmp_path / "unused.spool", spool_limit=1 << 20,
                                     queue_size=100), hostname="synthiq.example.org").start()
    assoc = SimpleNamespace(calling_ae="WS01", source_ip="127.0.0.1", listener=SimpleNamespace(ae_title="SYNTHIQ"),
                            transfer_syntax=lambda context_id: "1.2.840.10008.1.2.1")
    command = SimpleNamespace(field=0x0020, sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1")
    try:
        trail.query_retrieve(assoc, command, b"\x10\x00\x10\x00" + b"A" * 100_000, {}, 1, 0x0000)
        datagram = receiver.recv(65535)
    finally:
        trail.stop()
        receiver.close()
    document = etree.fromstring(datagram.split(BOM, 1)[1])
    assert schema.validate(document), schema.error_log
    assert len(base64.b64decode(document.findtext("ParticipantObjectIdentification/ParticipantObjectQuery"))) \
        == QUERY_AUDIT_BYTES
    assert "cut to its first 32768 of 100004 bytes" in document.findtext("EventIdentification/EventOutcomeDescription")
