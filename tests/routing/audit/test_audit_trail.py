"""The ATNA audit trail end to end: a running SynthIQ sends its PS3.15 audit messages to a
real rsyslog (Debian's, with rsyslog-gnutls) over mutual TLS on loopback, with a test CA
made here; every message is checked against the PS3.15 schema (converted by trang)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from lxml import etree
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from routing.simulators.processes import Managed
from routing.simulators.synthetic import write_study
from tests.harness import Cluster, ProxyHandle, clean_database, free_port, port_open, require_tool, send_files, wait_for

HOSTILE_PATIENT_ID = 'P<1>&"x'  # escaped in the XML, never breaks it


# -- the audit record repository: rsyslog with TLS and UDP inputs, writing one line per message --


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_test_pki(directory: Path) -> dict[str, Path]:
    """A test CA, rsyslog's server certificate (127.0.0.1) and SynthIQ's client certificate."""
    require_tool("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=SynthIQ test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=synthiq-test-{name}",
                 cwd=directory)
        (directory / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return {name: directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@dataclass
class Repository:
    """rsyslogd on loopback: mutual TLS (RFC 5425) and UDP (RFC 5426) in, a file out."""

    process: Managed
    tls_port: int
    udp_port: int
    out: Path
    pki: dict[str, Path]

    def start(self) -> None:
        self.process.start()
        wait_for(lambda: port_open(self.tls_port), timeout=20, what="rsyslogd's TLS port")

    def stop(self) -> None:
        self.process.stop()

    def messages(self) -> list[Received]:
        try:
            data = self.out.read_bytes()
        except FileNotFoundError:
            return []
        return [Received.parse(line) for line in data.split(b"\n") if line]

    def wait(self, predicate, *, timeout: float = 20, what: str = "an audit message") -> list[Received]:
        def found():
            got = [m for m in self.messages() if predicate(m)]
            return got or None
        return wait_for(found, timeout=timeout, what=what)

    def tls_config(self, **extra) -> dict:
        return {"Host": "127.0.0.1", "Port": self.tls_port, "Transport": "tls", "SiteId": "TEST-SITE",
                "Tls": {"Certificate": str(self.pki["client.pem"]), "Key": str(self.pki["client.key"]),
                        "CA": str(self.pki["ca.pem"])}} | extra


RSYSLOG_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k"
       defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{ca}"
       defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{tls_port}" name="tls")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{udp_port}" name="udp")
template(name="audit" type="string"
         string="%inputname%|%protocol-version%|%app-name%|%msgid%|%hostname%|%procid%|%rawmsg%\\n")
action(type="omfile" file="{out}" template="audit")
"""


def start_repository(directory: Path) -> Repository:
    rsyslogd = require_tool("rsyslogd", "rsyslog")
    if not Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists() and not list(
            Path("/usr/lib").glob("**/rsyslog/lmnsd_gtls.so")):
        pytest.fail("rsyslog's TLS driver is missing: apt-get install rsyslog-gnutls")
    pki = make_test_pki(directory / "pki")
    work = directory / "rsyslog-work"
    work.mkdir(parents=True, exist_ok=True)
    tls_port, udp_port = free_port(), free_port()
    out = directory / "audit.log"
    conf = directory / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(work=work, ca=pki["ca.pem"], cert=pki["server.pem"], key=pki["server.key"],
                                        tls_port=tls_port, udp_port=udp_port, out=out))
    check = subprocess.run([rsyslogd, "-N1", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout
    process = Managed("rsyslogd", [rsyslogd, "-n", "-f", str(conf), "-i", str(directory / "rsyslogd.pid")],
                      dict(os.environ), directory / "logs" / "rsyslogd.log")
    repo = Repository(process, tls_port, udp_port, out, pki)
    repo.start()
    return repo


@dataclass
class Received:
    transport: str
    version: str
    app_name: str
    msgid: str
    hostname: str
    procid: str
    raw: bytes

    @classmethod
    def parse(cls, line: bytes) -> Received:
        fields = line.split(b"|", 6)
        return cls(*(f.decode() for f in fields[:6]), raw=fields[6])  # type: ignore[arg-type]

    @property
    def xml(self) -> etree._Element:
        # The RFC 5424 header, then "-" (no structured data), then the BOM and the XML.
        match = re.fullmatch(rb"<85>1 \S+ \S+ SynthIQ \d+ IHE\+RFC-3881 - \xef\xbb\xbf(<AuditMessage.*)", self.raw)
        assert match, self.raw[:200]
        return etree.fromstring(match.group(1))

    @property
    def event(self) -> str:
        return self.xml.find("EventIdentification/EventID").get("csd-code")

    @property
    def event_types(self) -> list[str]:
        return [e.get("csd-code") for e in self.xml.findall("EventIdentification/EventTypeCode")]

    @property
    def outcome(self) -> str:
        return self.xml.find("EventIdentification").get("EventOutcomeIndicator")

    def participants(self) -> list[dict[str, str]]:
        return [dict(p.attrib) | {"role": (p.find("RoleIDCode").get("csd-code") if p.find("RoleIDCode") is not None
                                           else "")} for p in self.xml.findall("ActiveParticipant")]

    def objects(self, id_type: str) -> list[etree._Element]:
        return [o for o in self.xml.findall("ParticipantObjectIdentification")
                if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type]


def assert_valid(schema: etree.RelaxNG, message: Received, transport: str = "tls") -> None:
    assert (message.transport, message.version, message.app_name, message.msgid) == (
        transport, "1", "SynthIQ", "IHE+RFC-3881"), message
    assert schema.validate(message.xml), schema.error_log


# -- a backend: storage, C-FIND and C-MOVE (pynetdicom) --------------------------------------


class Backend:
    def __init__(self):
        self.port = free_port()
        ae = AE(ae_title="BACKEND")
        for context in [*StoragePresentationContexts, ]:
            ae.add_supported_context(context.abstract_syntax)
        for uid in (Verification, StudyRootQueryRetrieveInformationModelFind,
                    StudyRootQueryRetrieveInformationModelMove):
            ae.add_supported_context(uid)
        ae.add_requested_context(CTImageStorage)
        self.ae = ae
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find), (evt.EVT_C_MOVE, self._move)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _store(self, event) -> int:
        return 0x0000  # Success

    def _find(self, event) -> Iterator[tuple[int, Dataset | None]]:
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = event.identifier.StudyInstanceUID
        yield 0xFF00, match  # Pending: one match

    def _move(self, event):
        yield "127.0.0.1", self.port  # the move destination: this node itself
        yield 0  # no sub-operations: Success

    def config(self) -> dict:
        return {"Id": "backend", "AeTitle": "BACKEND", "Host": "127.0.0.1", "Port": self.port}

    def stop(self) -> None:
        self.server.shutdown()


@dataclass
class Site:
    repo: Repository
    cluster: Cluster
    proxy: ProxyHandle
    backend: Backend
    tmp: Path
    config: dict


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    from django.contrib.auth.models import User

    clean_database()
    tmp = tmp_path_factory.mktemp("audit")
    repo = start_repository(tmp)
    cluster = Cluster(tmp=tmp, env=dict(os.environ))
    backend = Backend()
    try:
        config = cluster.config([backend.config()], Audit=repo.tls_config())
        # A site that keeps Patient IDs out of its logs still has them in its audit trail.
        proxy = cluster.proxy(config, http=True, extra_env={"SYNTHIQ_LOG_PATIENT_ID": "0"})
        User.objects.create_user(username="auditor", password="a-long-enough-passphrase", is_staff=True)
        yield Site(repo, cluster, proxy, backend, tmp, config)
    finally:
        cluster.stop_all()
        backend.stop()
        repo.stop()


def _proxy_pid(site: Site) -> str:
    assert site.proxy.process.proc is not None
    return str(site.proxy.process.proc.pid)


# -- must be shown 1: each event arrives over TLS, valid, with the right participants ------------------


def test_start_is_audited_with_the_version(site, schema):
    from synthiq_project.version import VERSION

    (start,) = site.repo.wait(lambda m: m.event == "110100" and m.procid == _proxy_pid(site), what="110100")
    assert_valid(schema, start)
    assert start.event_types == ["110120"]
    app = start.participants()[0]
    assert app["role"] == "110150" and app["UserName"] == f"SynthIQ {VERSION}"
    assert app["AlternativeUserID"] == "AETITLES=SYNTHIQ"
    source = start.xml.find("AuditSourceIdentification")
    assert source.get("AuditEnterpriseSiteID") == "TEST-SITE" and source.get("AuditSourceID") == start.hostname


def test_a_store_is_one_instances_transferred_message_per_study(site, schema):
    study, paths = write_study(site.tmp / "store", count=3, patient_id=HOSTILE_PATIENT_ID)
    assert all(s.status == 0 for s in send_files(site.proxy.port, paths, calling_ae="MODALITY<1>"))
    (message,) = site.repo.wait(lambda m: m.event == "110104" and study.encode() in m.raw, what="110104")
    assert_valid(schema, message)
    assert message.xml.find("EventIdentification").get("EventActionCode") == "R"
    assert message.outcome == "0"
    by_role = {p["role"]: p for p in message.participants()}
    assert by_role["110153"]["AlternativeUserID"] == "AETITLES=MODALITY<1>"
    assert by_role["110153"]["NetworkAccessPointID"] == "127.0.0.1" and by_role["110153"]["UserIsRequestor"] == "true"
    assert by_role["110152"]["UserID"] == "BACKEND"
    (study_object,) = message.objects("110180")
    assert study_object.get("ParticipantObjectID") == study
    (sop_class,) = study_object.findall("ParticipantObjectDescription/SOPClass")
    assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (CTImageStorage, "3")
    (patient,) = message.objects("2")
    assert patient.get("ParticipantObjectID") == HOSTILE_PATIENT_ID
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert HOSTILE_PATIENT_ID not in site.proxy.process.log()  # SYNTHIQ_LOG_PATIENT_ID=0: not in the log


def _query_ae() -> AE:
    ae = AE(ae_title="QUERIER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def test_a_query_is_audited_with_the_query_itself(site, schema):
    study, paths = write_study(site.tmp / "query", count=1)
    send_files(site.proxy.port, paths)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    assoc = _query_ae().associate("127.0.0.1", site.proxy.port, ae_title="SYNTHIQ")
    assert assoc.is_established
    statuses = [int(s.Status) for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert statuses[-1] == 0
    (message,) = site.repo.wait(lambda m: m.event == "110112" and m.participants()[0]["UserID"] == "QUERIER"
                                and study.encode() in base64.b64decode(m.objects("110181")[0].findtext(
                                    "ParticipantObjectQuery")), what="110112")
    assert_valid(schema, message)
    (sop_class,) = message.objects("110181")
    assert sop_class.get("ParticipantObjectID") == StudyRootQueryRetrieveInformationModelFind
    details = {d.get("type"): base64.b64decode(d.get("value")).decode() for d in
               sop_class.findall("ParticipantObjectDetail")}
    assert details["TransferSyntax"].startswith("1.2.840.10008.1.2")
    assert message.outcome == "0"


def test_a_move_is_audited_as_begin_transferring(site, schema):
    study, paths = write_study(site.tmp / "move", count=1)
    send_files(site.proxy.port, paths)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    assoc = _query_ae().associate("127.0.0.1", site.proxy.port, ae_title="SYNTHIQ")
    assert assoc.is_established
    statuses = [int(s.Status) for s, _ in assoc.send_c_move(query, "BACKEND",
                                                            StudyRootQueryRetrieveInformationModelMove)]
    assoc.release()
    (message,) = site.repo.wait(lambda m: m.event == "110102" and study.encode() in m.raw, what="110102")
    assert_valid(schema, message)
    by_role = {p["role"]: p for p in message.participants()}
    assert by_role["110153"]["UserID"] == "BACKEND"  # the backend sends
    assert by_role["110152"]["UserID"] == "BACKEND"  # to the move destination named
    assert any(p["UserID"] == "QUERIER" and p["UserIsRequestor"] == "true" for p in message.participants())
    assert [o.get("ParticipantObjectID") for o in message.objects("110180")] == [study]
    assert message.outcome == ("0" if statuses[-1] == 0 else "4")


def test_a_rejected_association_is_a_node_authentication_alert(site, schema):
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", site.proxy.port, ae_title="NOT-OUR-AE")
    assert assoc.is_rejected
    (message,) = site.repo.wait(lambda m: m.event == "110113" and b"INTRUDER" in m.raw, what="110113 / 110126")
    assert_valid(schema, message)
    assert message.event_types == ["110126"] and message.outcome == "4"
    assert any(p["UserID"] == "INTRUDER" and p["NetworkAccessPointID"] == "127.0.0.1" for p in message.participants())
    (subject,) = message.objects("110182")
    assert b"called-ae" in base64.b64decode(subject.find("ParticipantObjectDetail").get("value"))


def test_a_reload_is_a_software_configuration_alert(site, schema):
    changed = json.loads(site.proxy.config_path.read_text())
    changed["Pools"][0]["AllowedCallingAeTitles"] = ["MODALITY", "MODALITY<1>", "QUERIER"]
    site.proxy.config_path.write_text(json.dumps(changed))
    site.proxy.process.signal(signal.SIGHUP)
    (message,) = site.repo.wait(lambda m: m.event == "110113" and "110131" in m.event_types, what="110131")
    assert_valid(schema, message)
    assert message.outcome == "0"
    (subject,) = message.objects("12")  # RFC 3881 URI
    assert subject.get("ParticipantObjectID") == site.proxy.config_path.resolve().as_uri()
    assert b"AllowedCallingAeTitles" in base64.b64decode(subject.find("ParticipantObjectDetail").get("value"))


def test_a_failed_and_a_successful_login_are_user_authentication_messages(site, schema):
    url = f"http://127.0.0.1:{site.proxy.http_port}/admin/login/"

    def login(password: str) -> requests.Response:
        web = requests.Session()
        page = web.get(url, timeout=10)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return web.post(url, data={"username": "auditor", "password": password, "next": "/",
                                   "csrfmiddlewaretoken": token}, timeout=10, allow_redirects=False)

    assert login("wrong-passphrase").status_code == 200
    assert login("a-long-enough-passphrase").status_code == 302
    messages = wait_for(lambda: (got := [m for m in site.repo.messages() if m.event == "110114"])[1:] and got,
                        timeout=20, what="two 110114 messages")
    for message in messages:
        assert_valid(schema, message)
        assert message.event_types == ["110122"]
        person = message.participants()[0]
        assert person["UserID"] == "auditor" and person["UserIsRequestor"] == "true"
        assert person["NetworkAccessPointID"] == "127.0.0.1"
    assert [m.outcome for m in messages] == ["4", "0"]


# -- must be shown 2: the repository away while stores go on ----------------------------------------


def _store_studies(site: Site, directory: Path, count: int) -> tuple[list[str], list[float]]:
    """``count`` studies, one association each; (their UIDs, each association's seconds)."""
    studies, took = [], []
    for n in range(count):
        study, paths = write_study(directory / str(n), count=2)
        began = time.monotonic()
        assert all(s.status == 0 for s in send_files(site.proxy.port, paths))
        took.append(time.monotonic() - began)
        studies.append(study)
    return studies, took


# How long the repository is away: a few seconds in make test; the minute with
# SYNTHIQ_AUDIT_OUTAGE_SECONDS=60 (docs/audit.md gives the command and what it measured).
OUTAGE_SECONDS = float(os.environ.get("SYNTHIQ_AUDIT_OUTAGE_SECONDS", "3"))


def test_repository_down_spools_and_sends_every_message_once_in_order(site):
    _, took_up = _store_studies(site, site.tmp / "before", 5)
    site.repo.stop()
    try:
        down_at = time.monotonic()
        studies, took_down = _store_studies(site, site.tmp / "down", 8)
        while time.monotonic() - down_at < OUTAGE_SECONDS and len(studies) < 400:  # stores go on all the while
            more, took = _store_studies(site, site.tmp / f"down{len(studies)}", 4)
            studies, took_down = studies + more, took_down + took
    finally:
        site.repo.start()
    # The stores ran at their usual rate (the median association; one slow one on a shared
    # machine says nothing): audit never waits for the repository.
    usual, meanwhile = statistics.median(took_up), statistics.median(took_down)
    print(f"repository away {OUTAGE_SECONDS:.0f}s: {len(studies)} studies stored meanwhile, median association "
          f"{meanwhile:.3f}s (before: {usual:.3f}s)")
    assert meanwhile < max(2 * usual, usual + 0.5), (usual, meanwhile)
    wanted = [s.encode() for s in studies]

    def arrived():
        got = [m for m in site.repo.messages() if m.event == "110104" and any(w in m.raw for w in wanted)]
        return got if len(got) >= len(wanted) else None
    wait_for(arrived, timeout=30 + OUTAGE_SECONDS, what="the spooled messages")
    time.sleep(1.0)  # anything sent twice would be here by now
    got = [m for m in site.repo.messages() if m.event == "110104" and any(w in m.raw for w in wanted)]
    order = [next(w for w in wanted if w in m.raw) for m in got]
    assert order == wanted  # every one, once, in order
    spool = Path(os.environ["SYNTHIQ_VAR_DIR"]) / "audit" / "main.spool"
    assert spool.exists() and spool.stat().st_mode & 0o777 == 0o600  # owner-only: it holds Patient IDs
    assert spool.stat().st_size == 0  # all sent
    log = site.proxy.process.log()
    assert "spooling to" in log and "spooled message(s) sent" in log  # it was away, and came back


def _metric(http_port: int, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10).text
    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]
    return sum(values) if values else None


def test_past_the_spool_bound_the_drops_are_counted_and_audited(site, schema):
    """A spool of 4 KiB holds two messages: the rest of a burst while the repository is away
    is dropped, counted in /metrics, logged, and audited (110133, 110134) once it is back."""
    var = site.tmp / "var-small-spool"
    proxy = site.cluster.proxy(site.cluster.config([site.backend.config()], Audit=site.repo.tls_config()),
                               name="runproxy-small-spool", http=True,
                               extra_env={"SYNTHIQ_AUDIT_SPOOL_BYTES": "4096", "SYNTHIQ_VAR_DIR": str(var)})
    pid = str(proxy.process.proc.pid) if proxy.process.proc else ""
    site.repo.wait(lambda m: m.procid == pid and m.event == "110100", what="the small-spool runproxy's start")
    assert _metric(proxy.http_port, "synthiq_audit_messages_total", outcome="dropped") == 0  # there from the start
    site.repo.stop()
    try:
        for n in range(8):
            _, paths = write_study(site.tmp / "burst" / str(n), count=1)
            assert all(s.status == 0 for s in send_files(proxy.port, paths))
        wait_for(lambda: _metric(proxy.http_port, "synthiq_audit_messages_total", outcome="dropped"),
                 timeout=10, what="drops in /metrics")
    finally:
        site.repo.start()
    stopped, = site.repo.wait(lambda m: m.procid == pid and "110133" in m.event_types, what="110133")
    started, = site.repo.wait(lambda m: m.procid == pid and "110134" in m.event_types, what="110134")
    # The count the alerts carry (a drop may still have been on its way when /metrics was read above).
    dropped = int(stopped.xml.findtext("EventIdentification/EventOutcomeDescription").split()[0])
    assert 4 <= dropped <= 7
    for message in (stopped, started):
        assert_valid(schema, message)
        assert message.xml.findtext("EventIdentification/EventOutcomeDescription").startswith(
            f"{dropped} audit message(s) dropped")
    wait_for(lambda: _metric(proxy.http_port, "synthiq_audit_messages_total", outcome="dropped") == dropped,
             timeout=10, what="/metrics to count the same drops")
    wait_for(lambda: f"{dropped} audit message(s) dropped" in proxy.process.log(), timeout=10, what="the log line")
    transferred = [m for m in site.repo.messages() if m.procid == pid and m.event == "110104"]
    assert len(transferred) == 8 - dropped  # what the spool held arrived


# -- must be shown 3: UDP --------------------------------------------------------------------------------


def test_udp_transport_sends_one_message_per_datagram_from_every_worker(site, schema):
    """runproxy --workers 2: the parent says it started, the worker that took the association
    reports the transfer, each from its own queue."""
    config = site.cluster.config([site.backend.config()],
                                 Audit={"Host": "127.0.0.1", "Port": site.repo.udp_port, "Transport": "udp"})
    proxy = site.cluster.proxy(config, name="runproxy-udp", extra_args=["--workers", "2"],
                               extra_env={"SYNTHIQ_VAR_DIR": str(site.tmp / "var-udp")})
    pid = str(proxy.process.proc.pid) if proxy.process.proc else ""
    workers = {str(p) for p in proxy.worker_pids()}
    study, paths = write_study(site.tmp / "udp", count=2)
    send_files(proxy.port, paths)
    start, = site.repo.wait(lambda m: m.procid == pid and m.event == "110100", what="110100 over UDP")
    stored, = site.repo.wait(lambda m: m.procid in workers and m.event == "110104", what="110104 over UDP")
    for message in (start, stored):
        assert_valid(schema, message, transport="udp")
    assert study.encode() in stored.raw
