"""Hostile input over real associations: identifiers that are not UIDs are refused and
leave nothing behind (no binding, no journal line, no forged log line, across a SIGKILL
restart), and a backend's response that does not answer the request is never a success."""

from __future__ import annotations

import re
import threading
import time

import pydicom.config
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from routing.simulators.synthetic import make_instance, write_study
from tests.harness import free_port, responses_to_the_caller, send_files, wait_for

EXAMPLES = 60
# A log line as runproxy writes them (plain format), or its one start-up line on stdout.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \[|runproxy ready)")


def is_uid(value: str) -> bool:
    """PS3.5's UI, written here independently of the product: digits in dot-separated
    components, at most 64 characters, NUL/space padding aside."""
    value = value.strip("\x00 ")
    return len(value) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)*", value) is not None


hostile_uids = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=90),
    st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,20}){3,12}\Z"),  # valid and over-long ones
    st.builds(lambda n: "1." * n + "1", st.integers(20, 2000)),
    st.sampled_from(["1.2.3\n2026-01-01 00:00:00,000 INFO [1] synthiq.routing forged",
                     "1.2.3\tnode-b\tP\t9999999999.000", "1..2", ".1.2", "1.2.", "1.2.840.10008.\x1b[31m",
                     "9" * 100_000]),
)


@pytest.mark.postgres  # it asserts what the database holds: run on both
def test_study_uids_that_are_not_uids_are_refused_and_leave_nothing_behind(cluster, tmp_path):
    from django.conf import settings as django_settings

    from affinity.journal import journal_path
    from affinity.models import Binding

    a = cluster.backend("node-a")  # load 0: where new studies go
    b = cluster.backend("node-b", queue_depth=40)  # load 0.8
    proxy = cluster.proxy(cluster.config([a, b]))
    valid: set[str] = set()
    refused: list[int] = []

    # A modality sending one normal study meanwhile, an instance every 0.2 s.
    normal_uid, normal_files = write_study(tmp_path / "normal", count=30)
    normal: list[int] = []
    stop = threading.Event()

    def modality() -> None:
        for path in normal_files:
            if stop.wait(0.2):
                return
            normal.extend(s.status for s in send_files(proxy.port, [path], calling_ae="CT01"))

    sender = threading.Thread(target=modality, daemon=True)
    sender.start()
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = responses_to_the_caller(ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ"))
    assert assoc.is_established
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(hostile_uids)
        def one(study_uid: str) -> None:
            ds = make_instance(study_uid=study_uid, series_uid=generate_uid(), number=1, rows=8, columns=8)
            rsp = assoc.send_c_store(ds)
            code = int(rsp.Status)
            if is_uid(study_uid):
                assert code == 0, f"valid {study_uid!r} answered 0x{code:04X}"
                valid.add(study_uid.strip("\x00 "))
            else:
                assert code in (0xC000, 0xC001), f"invalid {study_uid[:80]!r} answered 0x{code:04X}"
                refused.append(code)

        one()
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
        if assoc.is_established:
            assoc.release()
        sender.join(timeout=60)
        stop.set()
    assert refused, "no invalid UID was drawn"
    assert normal == [0] * len(normal_files)
    assert normal_uid in a.holdings() and normal_uid not in b.holdings()  # whole, and placed by load

    def placed_by_load(name: str) -> None:
        suid, files = write_study(tmp_path / name, count=1)
        assert [s.status for s in send_files(proxy.port, files)] == [0]
        assert suid in a.holdings(), f"{name}: a new study did not go to the least busy backend"
        valid.add(suid)

    placed_by_load("after")
    proxy.process.proc.kill()
    proxy.process.proc.wait(10)
    proxy.restart()
    placed_by_load("after-restart")

    bound = set(Binding.objects.values_list("study_uid", flat=True))
    assert bound <= valid | {normal_uid}, f"bindings nobody should have: {sorted(bound - valid)[:5]}"
    assert all(is_uid(uid) for uid in bound)
    forged = [line for line in proxy.process.log().splitlines() if line and not LOG_LINE.match(line)]
    assert not forged, f"log lines a peer wrote: {forged[:3]}"
    wait_for(lambda: "refused with 0xC000" in proxy.process.log(), timeout=10, what="refused with 0xC000")
    journal = journal_path(django_settings.VAR_DIR, django_settings.DATABASES["default"]).read_text()
    for line in journal.splitlines():
        pool, study, backend, flag, stamp = line.split("\t")
        assert is_uid(study) and flag in "PW" and float(stamp) <= time.time() + 1, line


class LiarScp:
    """A pynetdicom backend that answers Success for another message or another instance."""

    def __init__(self):
        self.port = free_port()
        self.lie = "message-id"
        self.stored = 0
        ae = AE(ae_title="LIAR")
        for context in (CTImageStorage, Verification, StudyRootQueryRetrieveInformationModelFind,
                        StudyRootQueryRetrieveInformationModelMove, StorageCommitmentPushModel):
            ae.add_supported_context(context)
        ae.add_requested_context(CTImageStorage)  # C-MOVE sub-operations, to itself
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find), (evt.EVT_C_MOVE, self._move)])

    def _status(self, request, code: int) -> Dataset:
        answer = Dataset()
        answer.Status = code
        if self.lie == "message-id":
            answer.MessageIDBeingRespondedTo = (request.MessageID + 1) % 65536
        elif self.lie == "sop-instance":
            answer.AffectedSOPInstanceUID = "1.2.3.4.999"
        return answer

    def _store(self, event):
        self.stored += 1
        return self._status(event.request, 0x0000)

    def _find(self, event):
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = "1.2.3.4"
        yield self._status(event.request, 0xFF00), match
        yield self._status(event.request, 0x0000), None

    def _move(self, event):
        yield "127.0.0.1", self.port  # the destination: itself
        yield 1
        yield self._status(event.request, 0x0000), None

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def liar(cluster):
    scp = LiarScp()
    try:
        proxy = cluster.proxy(cluster.config([{"Id": "liar", "AeTitle": "LIAR", "Host": "127.0.0.1",
                                               "Port": scp.port, "Health": {"Mode": "liveness", "Probe": "tcp"}}],
                                             HeartbeatTimeoutSeconds=600))
        yield scp, proxy
    finally:
        scp.stop()


@pytest.mark.parametrize("lie", ["message-id", "sop-instance"])
def test_a_success_for_another_message_or_instance_is_never_passed_on(liar, tmp_path, lie):
    scp, proxy = liar
    scp.lie = lie
    _, files = write_study(tmp_path / "s", count=2)
    sent = send_files(proxy.port, files)
    assert scp.stored == 2  # the backend did answer each
    assert [s.status for s in sent] == [0xA702, 0xA702]
    assert all("liar" in s.comment for s in sent)
    # runproxy's log lines are written by its log thread: they may trail the answers.
    wait_for(lambda: "backend liar answered" in proxy.process.log(), timeout=10, what="the violation's log line")


def _find(port: int, query: Dataset, msg_id: int = 7) -> list[int]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHIQ")
    assert assoc.is_established
    try:
        return [int(rsp.Status) for rsp, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind,
                                                                  msg_id=msg_id) if "Status" in rsp]
    finally:
        assoc.release()


def test_a_find_response_for_another_message_ends_the_query_in_failure(liar):
    scp, proxy = liar
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    statuses = _find(proxy.port, query)
    assert statuses == [0xA700]  # the pending match for another message is not relayed either
    wait_for(lambda: "backend liar answered message 8, not 7" in proxy.process.log(), timeout=10, what="the log line")


def test_a_move_response_for_another_message_is_never_a_success(liar, tmp_path):
    scp, proxy = liar
    scp.lie = "none"
    suid, files = write_study(tmp_path / "s", count=1)
    assert [s.status for s in send_files(proxy.port, files)] == [0]  # bound to the liar
    scp.lie = "message-id"
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = suid
    try:
        statuses = [int(rsp.Status) for rsp, _ in assoc.send_c_move(
            query, "LIAR", StudyRootQueryRetrieveInformationModelMove, msg_id=3) if "Status" in rsp]
    finally:
        assoc.release()
    assert statuses == [0xA702]
    wait_for(lambda: "backend liar answered message 4, not 3" in proxy.process.log(), timeout=10, what="the log line")


@pytest.mark.parametrize("key", ["1.2.3\n4", "1." * 40 + "1", "1.2.3\\1.2.x"])
def test_a_query_with_an_invalid_uid_key_is_refused_with_a900(liar, key):
    scp, proxy = liar
    scp.lie = "none"
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        query.StudyInstanceUID = key
        assert _find(proxy.port, query) == [0xA900]
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
    # A list of valid UIDs and an empty key (universal match) are queries, not errors.
    query.StudyInstanceUID = ["1.2.3", "1.2.4"]
    assert _find(proxy.port, query)[-1] == 0x0000


def test_a_commitment_request_naming_an_invalid_uid_is_refused_with_0115(liar):
    scp, proxy = liar
    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ")
    assert assoc.is_established
    action = Dataset()
    action.TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = "1.2.3.\n4"
    action.ReferencedSOPSequence = [item]
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        status, _ = assoc.send_n_action(action, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
        assoc.release()
    assert int(status.Status) == 0x0115
    assert "Referenced SOP Instance UID invalid" in str(status.ErrorComment)


def test_ae_titles_with_control_characters_write_no_lines_of_their_own(cluster):
    import socket

    from tests.routing.test_fuzz_pdus import _associate_rq

    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]))
    rq = _associate_rq(called="WRONGXXXXXXXXXXX")
    forged = b"X\n2026-01-01 00:"
    rq = rq.replace(b"WRONGXXXXXXXXXXX", forged + b" " * (16 - len(forged)))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(rq)
        assert sock.recv(100)[:1] in (b"\x03", b"\x07")  # A-ASSOCIATE-RJ or A-ABORT
    wait_for(lambda: "A-ASSOCIATE-RQ" in proxy.process.log(), timeout=10, what="the refusal's log line")
    lines = [line for line in proxy.process.log().splitlines() if line]
    assert all(LOG_LINE.match(line) for line in lines), [line for line in lines if not LOG_LINE.match(line)]
    assert "X\\n2026-01-01" in proxy.process.log()


def test_every_log_record_is_one_line_whatever_its_values():
    import json
    import logging

    from synthiq_project.logformat import JsonLines, ProcessTags

    record = logging.LogRecord("synthiq.routing", logging.WARNING, __file__, 1, "calling_ae=%s study=%s",
                               ("CT\r\n2026-01-01 forged", "1.2\x1b[2J\u2028x"), None)
    ProcessTags().filter(record)
    plain = logging.Formatter("%(message)s").format(record)
    assert "\n" not in plain and "\r" not in plain and "\x1b" not in plain and "\u2028" not in plain
    assert plain == "calling_ae=CT\\r\\n2026-01-01 forged study=1.2\\x1b[2J\\u2028x"
    assert json.loads(JsonLines().format(record))["message"] == plain


def test_a_forged_journal_line_is_skipped_on_replay(tmp_path):
    from affinity.journal import BindingJournal

    path = tmp_path / "bindings.journal"
    now = time.time()
    path.write_text(f"main\t1.2.3\tnode-a\tP\t{now:.3f}\n"
                    f"main\t1.2.4\tnode-b\tP\t9999999999.000\n"  # dated 2286
                    f"main\t1.2.x\tnode-b\tP\t{now:.3f}\n"
                    f"main\t1.2.5\tnode b\tP\t{now:.3f}\n")
    pending = BindingJournal(path, window_hours=24).start()
    assert set(pending) == {("main", "1.2.3")}
    journal = BindingJournal(path, window_hours=24)
    journal.record({("main", "1.2.6\nmain\t1.2.7\tnode-b\tP\t1"): "node-a", ("main", "1.2.8"): "node-a"})
    assert path.read_text().count("\n") == 2 and "1.2.7" not in path.read_text()


@pytest.mark.postgres  # it asserts what the database holds: run on both
def test_a_row_the_database_refuses_is_dropped_and_the_rest_written(db):
    """A bad row (here: a backend the database does not have) fails its own write only; the
    database is not marked unavailable and the batch's other studies are bound."""
    from affinity.bindings import Bindings
    from affinity.models import Binding
    from tests.health.helpers import config_apply

    config_apply({"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Port": 11112, "Backends": [
        {"Id": "node-a", "AeTitle": "NODEA", "Host": "127.0.0.1", "Port": 41001}]}]})
    bindings = Bindings(window_hours=1)
    held = bindings.claim_many({("main", "1.2.1"): "node-a", ("main", "1.2.2"): "no-such-backend",
                                ("main", "1.2.3"): "node-a"})
    assert bindings.db_ok
    assert held[("main", "1.2.1")] == "node-a" and held[("main", "1.2.3")] == "node-a"
    assert set(Binding.objects.values_list("study_uid", flat=True)) == {"1.2.1", "1.2.3"}
    bindings.touch(("main", "1.2.1"))
    bindings.note_instance(pool_id="main", sop_instance_uid="1.2.1.1", backend_id="no-such-backend",
                           study_uid="1.2.1")
    bindings.note_instance(pool_id="main", sop_instance_uid="1.2.1.2", backend_id="node-a", study_uid="1.2.1")
    bindings.flush()
    assert bindings.db_ok
    assert Binding.objects.get(study_uid="1.2.1").instance_count == 1


def test_a_fanned_out_find_that_could_not_ask_a_backend_is_not_a_success(cluster):
    """The matches that came are relayed, then 0xA700 names the backend not heard from
    (an SCU may then treat the whole query as failed: the honest outcome)."""
    scp = LiarScp()
    scp.lie = "none"
    down = cluster.backend("node-b")
    down.control(health="down")
    try:
        proxy = cluster.proxy(cluster.config(
            [{"Id": "liar", "AeTitle": "LIAR", "Host": "127.0.0.1", "Port": scp.port,
              "Health": {"Mode": "liveness", "Probe": "tcp"}}, down], HeartbeatTimeoutSeconds=600))
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        assert _find(proxy.port, query) == [0xFF00, 0xA700]
        wait_for(lambda: "backend node-b unhealthy, not asked" in proxy.process.log(), timeout=10, what="the log line")
    finally:
        scp.stop()


@pytest.mark.postgres  # it asserts what the database holds: run on both
def test_a_routing_decision_the_database_refuses_does_not_stop_publishing(db):
    """The review's PostgreSQL case: one decision row failing the batch made every publish fail
    (every 2 s, for good). Now the row is dropped and logged, the others and the counters written."""
    from routing.models import ProxyProcess, RoutingDecision
    from routing.telemetry import Telemetry
    from tests.health.helpers import config_apply

    config_apply({"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Port": 11112, "Backends": [
        {"Id": "node-a", "AeTitle": "NODEA", "Host": "127.0.0.1", "Port": 41001}]}]})
    telemetry = Telemetry(process_id="test:1")
    for study, backend in (("1.2.1", "node-a"), ("1.2.2", "no-such-backend"), ("1.2.3", "node-a")):
        telemetry.decided(pool_id="main", study_uid=study, backend_id=backend, reason="least-busy",
                          calling_ae="CT01", source_ip="127.0.0.1", modality="CT")
    telemetry.publish(extra={}, listeners=[])
    assert set(RoutingDecision.objects.values_list("study_uid", flat=True)) == {"1.2.1", "1.2.3"}
    assert ProxyProcess.objects.filter(id="test:1").exists()
    telemetry.publish(extra={}, listeners=[])  # and nothing is retried
    assert RoutingDecision.objects.count() == 2
