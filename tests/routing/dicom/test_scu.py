"""SynthIQ's DICOM client (routing.dicom.scu) against a scripted peer on a socketpair: each test
plays the backend's side PDU by PDU (this package's own framer, command and negotiation code)
and checks what the client made of it, and what it sent back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from routing.dicom import commands, identifiers, negotiation, pdu, scu, sop_classes
from routing.relay import commitment

IMPLICIT = identifiers.IMPLICIT_VR_LITTLE_ENDIAN
PEER = scu.Peer("node-s", "SCRIPTED", "127.0.0.1", 104)


class ScriptedPeer:
    """The acceptor's end of a socketpair, driven by a test's script on its own thread."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.framer = pdu.PduBuffer(max_length=1 << 20)
        self.pending: list[pdu.Pdv] = []

    def pdu(self) -> pdu.Pdu:
        while (got := self.framer.next()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the client closed the connection")
            self.framer.feed(data)
        return got

    def accept(self, syntaxes: dict[int, str | None] | None = None, *,
               roles: dict[str, tuple[bool, bool]] | None = None, max_pdu: int = 16384) -> negotiation.AssociateRequest:
        """Read the A-ASSOCIATE-RQ and accept each proposed context in ``syntaxes`` (context ID ->
        the syntax, None refused; default: each in its first proposed syntax)."""
        rq = negotiation.decode_associate_rq(self.pdu().raw)
        results = []
        for cx in rq.contexts:
            chosen = (syntaxes or {}).get(cx.context_id, str(cx.transfer_syntax[0]))
            result = PresentationContext()
            result.context_id = cx.context_id
            result.result = 0x00 if chosen else 0x03
            result.add_transfer_syntax(chosen or IMPLICIT)
            results.append(result)
        ac = A_ASSOCIATE()
        ac.application_context_name = negotiation.APPLICATION_CONTEXT
        ac.calling_ae_title, ac.called_ae_title, ac.result = rq.calling_ae, rq.called_ae, 0x00
        ac.presentation_context_definition_results_list = results
        length = MaximumLengthNotification()
        length.maximum_length_received = max_pdu
        items: list[Any] = [length]
        for uid, (scu_role, scp_role) in (roles or {}).items():
            role = SCP_SCU_RoleSelectionNegotiation()
            role.sop_class_uid, role.scu_role, role.scp_role = uid, scu_role, scp_role
            items.append(role)
        ac.user_information = items
        self.sock.sendall(A_ASSOCIATE_AC(ac).encode())
        return rq

    def message(self) -> tuple[int, commands.Command, bytes | None]:
        """The client's next DIMSE message: (context ID, command set, data set bytes)."""
        command = self._gather(command=True)
        context_id, raw = command
        decoded = commands.decode(raw)
        data = self._gather(command=False)[1] if decoded.has_data_set else None
        return context_id, decoded, data

    def _gather(self, *, command: bool) -> tuple[int, bytes]:
        parts = []
        while True:
            while not self.pending:
                got = self.pdu()
                assert got.type == pdu.P_DATA_TF, f"PDU type {got.type} where a message was due"
                self.pending.extend(pdu.pdvs(got))
            pdv = self.pending.pop(0)
            assert pdv.is_command == command
            parts.append(bytes(pdv.data))
            if pdv.is_last:
                return pdv.context_id, b"".join(parts)

    def send(self, context_id: int, command: bytes, data: bytes | None = None) -> None:
        out = pdu.fragments(context_id, command, command=True, last=True, max_pdu=16384)
        if data is not None:
            out += pdu.fragments(context_id, data, command=False, last=True, max_pdu=16384)
        self.sock.sendall(b"".join(out))

    def answer(self, context_id: int, request: commands.Command, status: int, data: bytes | None = None) -> None:
        response = commands.decode(commands.response(request, status))
        values: dict[int, int | str | bytes | list[int]] = dict(response.values)
        if data is not None:
            values[commands.DATA_SET_TYPE] = 0x0000
        self.send(context_id, commands.encode(values), data)

    def release(self) -> None:
        """Read the client's A-RELEASE-RQ and answer it."""
        assert self.pdu().type == pdu.A_RELEASE_RQ_TYPE
        self.sock.sendall(pdu.release_rp())


@pytest.fixture
def scripted(monkeypatch) -> Iterator[Callable[[Callable[[ScriptedPeer], object]], list[object]]]:
    """Run a script as the peer; returns what it returned (or raises what it raised) on join."""
    threads: list[threading.Thread] = []

    def run(script: Callable[[ScriptedPeer], object]) -> list[object]:
        ours, theirs = socket.socketpair()
        monkeypatch.setattr(scu, "_connect", lambda peer, timeout: ours)
        outcome: list[object] = []

        def play() -> None:
            try:
                outcome.append(script(ScriptedPeer(theirs)))
            except BaseException as exc:  # handed to the test at join
                outcome.append(exc)
            finally:
                theirs.close()
        thread = threading.Thread(target=play, daemon=True)
        thread.start()
        threads.append(thread)
        return outcome
    yield run
    for thread in threads:
        thread.join(10)


def _played(outcome: list[object]) -> object:
    for _ in range(200):
        if outcome:
            break
        threading.Event().wait(0.05)
    [result] = outcome
    if isinstance(result, BaseException):
        raise result
    return result


def _echo_link(**kwargs: Any):
    return scu.associate(PEER, calling_ae="SYNTHIQ", contexts=[(sop_classes.VERIFICATION, [IMPLICIT])],
                         timeout=kwargs.pop("timeout", 2.0), **kwargs)


def test_an_echo_is_answered_and_the_association_released(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept()
        context_id, request, _ = p.message()
        p.answer(context_id, request, 0x0000)
        p.release()
        return request.message_id or 0

    outcome = scripted(peer)
    with _echo_link() as link:
        assert scu.echo(link) == 0x0000
    assert _played(outcome) == 1


def test_a_response_to_another_message_id_aborts_and_says_so(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept()
        context_id, request, _ = p.message()
        p.send(context_id, commands.encode({commands.COMMAND_FIELD: commands.C_ECHO_RSP,
                                            commands.MESSAGE_ID_RESPONDED_TO: 7, commands.STATUS: 0,
                                            commands.DATA_SET_TYPE: commands.NO_DATA_SET}))
        return p.pdu().type

    outcome = scripted(peer)
    with pytest.raises(scu.Unreachable, match=r"node-s .*for message 7 .*not the response to message 1"), \
            _echo_link() as link:
        scu.echo(link)
    assert _played(outcome) == pdu.A_ABORT


def test_a_p_data_larger_than_announced_is_refused_before_it_is_read(scripted):
    def peer(p: ScriptedPeer) -> int:
        rq = p.accept()
        assert rq.max_pdu == scu.MAX_PDU
        p.message()
        p.sock.sendall(pdu.HEADER.pack(pdu.P_DATA_TF, scu.MAX_PDU + 1))  # the header alone: never the body
        return p.pdu().type

    outcome = scripted(peer)
    with pytest.raises(scu.Unreachable, match=rf"node-s .*announced a {scu.MAX_PDU + 1}-byte PDU"), \
            _echo_link() as link:
        scu.echo(link)
    assert _played(outcome) == pdu.A_ABORT


def test_a_release_request_while_a_response_is_due_is_answered_and_fails_the_operation(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept()
        p.message()
        p.sock.sendall(pdu.release_rq())
        return p.pdu().type

    outcome = scripted(peer)
    with pytest.raises(scu.Unreachable, match="node-s .*released the association while a response was due"), \
            _echo_link() as link:
        scu.echo(link)
    assert _played(outcome) == pdu.A_RELEASE_RP_TYPE  # answered properly, no abort after it


def test_a_peer_that_rejects_is_unreachable_and_rejected(scripted):
    outcome = scripted(lambda p: (p.pdu(), p.sock.sendall(negotiation.reject(negotiation.REJECT_CALLING_AE))))
    with pytest.raises(scu.Unreachable, match="node-s .*rejected the association") as caught, _echo_link():
        pass
    assert caught.value.rejected
    _played(outcome)


def test_a_peer_that_accepts_no_context_is_unreachable_unless_that_is_allowed(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept({1: None})
        return p.pdu().type

    outcome = scripted(peer)
    with pytest.raises(scu.Unreachable, match="node-s .*accepted none of the presentation contexts") as caught, \
            _echo_link():
        pass
    assert not caught.value.rejected
    assert _played(outcome) == pdu.A_ABORT

    outcome = scripted(lambda p: (p.accept({1: None}), p.release()))
    with _echo_link(require_context=False) as link:  # the syntax probe asks just to learn what is accepted
        assert link.contexts == {}
    _played(outcome)


def test_contexts_are_numbered_in_proposal_order_and_read_back_with_their_syntax(scripted):
    explicit = identifiers.EXPLICIT_VR_LITTLE_ENDIAN
    proposed = [(sop_classes.VERIFICATION, [IMPLICIT]), (sop_classes.STUDY_ROOT_FIND, [IMPLICIT, explicit]),
                (sop_classes.STUDY_ROOT_MOVE, [IMPLICIT])]
    outcome = scripted(lambda p: (p.accept({1: IMPLICIT, 3: explicit, 5: None}, max_pdu=4096), p.release()))
    with scu.associate(PEER, calling_ae="SYNTHIQ", contexts=proposed, timeout=2.0) as link:
        assert link.contexts == {1: (sop_classes.VERIFICATION, IMPLICIT), 3: (sop_classes.STUDY_ROOT_FIND, explicit)}
        assert link.max_pdu == 4096 and not link.implicit(3)
        with pytest.raises(scu.Unreachable, match="did not accept"):
            link.context_id(sop_classes.STUDY_ROOT_MOVE)
    _played(outcome)


def test_a_c_find_yields_datasets_and_a_failure_status_is_a_lookup_error(scripted):
    def peer(p: ScriptedPeer) -> str:
        p.accept()
        context_id, request, data = p.message()
        assert data is not None
        asked = scu.decode(data, implicit=True)
        match = Dataset()
        match.StudyInstanceUID = "1.2.3"
        p.answer(context_id, request, 0xFF00, scu.encode(match, implicit=True))
        p.answer(context_id, request, 0xA700)
        p.release()
        return str(asked.QueryRetrieveLevel)

    outcome = scripted(peer)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    found = []
    with scu.associate(PEER, calling_ae="SYNTHIQ", contexts=[(sop_classes.STUDY_ROOT_FIND, [IMPLICIT])],
                       timeout=2.0) as link:
        with pytest.raises(LookupError, match="0xA700"):
            found.extend(scu.find(link, sop_classes.STUDY_ROOT_FIND, query))
    assert [ds.StudyInstanceUID for ds in found] == ["1.2.3"]
    assert _played(outcome) == "STUDY"


def _report(transaction: str, *, implicit: bool) -> bytes:
    info = Dataset()
    info.TransactionUID = transaction
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    info.ReferencedSOPSequence = [item]
    return scu.encode(info, implicit=implicit)


def _commitment_peer(*, report_before_response: bool) -> Callable[[ScriptedPeer], tuple[int, int, int]]:
    """A backend that answers the N-ACTION and reports on the same association (before or after
    its response); returns (action type, the report answer's status, the report's Message ID answered)."""
    def peer(p: ScriptedPeer) -> tuple[int, int, int]:
        rq = p.accept(roles={sop_classes.STORAGE_COMMITMENT_PUSH: (True, True)})
        assert rq.roles == {sop_classes.STORAGE_COMMITMENT_PUSH: (True, True)}
        context_id, action, _ = p.message()
        report = commands.event_report(message_id=42, sop_class_uid=sop_classes.STORAGE_COMMITMENT_PUSH,
                                       sop_instance_uid=sop_classes.STORAGE_COMMITMENT_INSTANCE, event_type=1)
        if not report_before_response:
            p.answer(context_id, action, 0x0000)
        p.send(context_id, report, _report("1.2.9", implicit=False))  # accepted in Explicit VR LE, proposed first
        _, answer, _ = p.message()
        if report_before_response:
            p.answer(context_id, action, 0x0000)
        p.release()
        return action.us(commands.ACTION_TYPE_ID) or 0, answer.status or 0, answer.responded_to or 0
    return peer


@pytest.mark.parametrize("before", [False, True], ids=["after-the-response", "before-the-response"])
def test_a_report_on_the_n_action_association_is_answered_and_returned(scripted, before):
    outcome = scripted(_commitment_peer(report_before_response=before))
    code, reported = commitment.send_share(PEER, requester_ae="MODALITY", transaction_uid="1.2.9",
                                           share=[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")], timeout=2.0)
    assert code == 0x0000
    [(data, syntax)] = reported
    assert commitment.read_information(data, syntax).references == [("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")]
    assert _played(outcome) == (1, 0x0000, 42)


def test_no_report_within_the_wait_releases_after_the_response(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept()
        context_id, action, _ = p.message()
        p.answer(context_id, action, 0x0000)
        return p.pdu().type

    outcome = scripted(peer)
    code, reported = commitment.send_share(PEER, requester_ae="MODALITY", transaction_uid="1.2.9",
                                           share=[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")], timeout=2.0)
    assert (code, reported) == (0x0000, [])
    assert _played(outcome) == pdu.A_RELEASE_RQ_TYPE


def test_a_report_is_sent_only_where_the_peer_takes_synthiq_as_the_scp(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept(roles={sop_classes.STORAGE_COMMITMENT_PUSH: (False, True)})
        context_id, report, data = p.message()
        assert data is not None and report.field == commands.N_EVENT_REPORT_RQ
        p.answer(context_id, report, 0x0000)
        p.release()
        return report.us(commands.EVENT_TYPE_ID) or 0

    info = scu.decode(_report("1.2.9", implicit=True), implicit=True)
    outcome = scripted(peer)
    assert commitment.event_report(PEER, calling_ae="SYNTHIQ", event_type=2, information=info, timeout=2.0) == 0
    assert _played(outcome) == 2

    outcome = scripted(lambda p: (p.accept(), p.pdu().type)[1])  # no role selection reply: SCU only
    with pytest.raises(scu.Unreachable, match="node-s .*did not accept SynthIQ as the SCP"):
        commitment.event_report(PEER, calling_ae="SYNTHIQ", event_type=2, information=info, timeout=2.0)
    assert _played(outcome) == pdu.A_ABORT


def test_an_abort_mid_operation_is_unreachable_with_the_peer_s_abort_as_cause(scripted):
    def peer(p: ScriptedPeer) -> None:
        p.accept()
        p.message()
        p.sock.sendall(pdu.abort(source=pdu.ABORT_SOURCE_USER))

    outcome = scripted(peer)
    with pytest.raises(scu.Unreachable, match="node-s .*sent A-ABORT") as caught, _echo_link() as link:
        scu.echo(link)
    assert isinstance(caught.value.cause, ConnectionError)
    _played(outcome)


def test_silence_is_unreachable_within_the_timeout(scripted):
    outcome = scripted(lambda p: (p.accept(), p.message(), p.pdu().type)[2])
    with pytest.raises(scu.Unreachable, match="node-s .*no answer within 0.3 s") as caught, \
            _echo_link(timeout=0.3) as link:
        scu.echo(link)
    assert isinstance(caught.value.cause, TimeoutError)
    assert _played(outcome) == pdu.A_ABORT


def test_a_backend_that_releases_after_its_response_is_answered_and_the_share_stands(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept()
        context_id, action, _ = p.message()
        p.answer(context_id, action, 0x0000)
        p.sock.sendall(pdu.release_rq())
        return p.pdu().type

    outcome = scripted(peer)
    code, reported = commitment.send_share(PEER, requester_ae="MODALITY", transaction_uid="1.2.9",
                                           share=[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")], timeout=2.0)
    assert (code, reported) == (0x0000, [])
    assert _played(outcome) == pdu.A_RELEASE_RP_TYPE


@pytest.mark.parametrize("ending", ["abort", "close"])
def test_a_backend_that_aborts_or_hangs_up_after_its_response_leaves_the_share_standing(scripted, ending):
    def peer(p: ScriptedPeer) -> None:
        p.accept()
        context_id, action, _ = p.message()
        p.answer(context_id, action, 0x0000)
        if ending == "abort":
            p.sock.sendall(pdu.abort(source=pdu.ABORT_SOURCE_USER))

    outcome = scripted(peer)
    code, reported = commitment.send_share(PEER, requester_ae="MODALITY", transaction_uid="1.2.9",
                                           share=[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")], timeout=2.0)
    assert (code, reported) == (0x0000, [])
    _played(outcome)


def test_reports_without_end_where_the_n_action_response_is_due_are_a_protocol_error(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept(roles={sop_classes.STORAGE_COMMITMENT_PUSH: (True, True)})
        context_id, _, _ = p.message()
        for n in range(scu.MAX_REPORTS_BEFORE_RESPONSE + 1):
            p.send(context_id, commands.event_report(
                message_id=100 + n, sop_class_uid=sop_classes.STORAGE_COMMITMENT_PUSH,
                sop_instance_uid=sop_classes.STORAGE_COMMITMENT_INSTANCE, event_type=1),
                _report("1.2.9", implicit=False))
            if n < scu.MAX_REPORTS_BEFORE_RESPONSE:
                p.message()  # SynthIQ's answer to each report it takes
        return p.pdu().type

    outcome = scripted(peer)
    with pytest.raises(OSError, match=f"more than {scu.MAX_REPORTS_BEFORE_RESPONSE} reports"):
        commitment.send_share(PEER, requester_ae="MODALITY", transaction_uid="1.2.9",
                              share=[("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")], timeout=2.0)
    assert _played(outcome) == pdu.A_ABORT


def test_empty_fragments_count_against_the_command_set_bound(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept()
        context_id, _, _ = p.message()
        empty = pdu.PDV_HEADER.pack(2, context_id, pdu.MCH_COMMAND)  # a command fragment with no bytes, not the last
        per_pdu = 2000
        for _ in range(scu.MAX_COMMAND // (pdu.PDV_OVERHEAD * per_pdu) + 1):
            body = empty * per_pdu
            p.sock.sendall(pdu.HEADER.pack(pdu.P_DATA_TF, len(body)) + body)
        return p.pdu().type

    outcome = scripted(peer)
    with pytest.raises(scu.Unreachable, match="node-s .*command set over"), _echo_link() as link:
        scu.echo(link)
    assert _played(outcome) == pdu.A_ABORT


def test_a_find_still_going_at_its_deadline_ends(scripted):
    def peer(p: ScriptedPeer) -> int:
        p.accept()
        context_id, request, _ = p.message()
        match = Dataset()
        match.StudyInstanceUID = "1.2.3"
        sent = 0
        try:
            while sent < 50:  # Pending after Pending, each in time
                p.answer(context_id, request, 0xFF00, scu.encode(match, implicit=False))
                sent += 1
                threading.Event().wait(0.05)
        except OSError:  # the client gave up and closed the connection
            pass
        return sent

    outcome = scripted(peer)
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", ""
    with pytest.raises(scu.Unreachable, match="still going at its deadline"), \
            scu.associate(PEER, calling_ae="SYNTHIQ", contexts=[(sop_classes.STUDY_ROOT_FIND, scu.DATA_SET_SYNTAXES)],
                          timeout=2.0) as link:
        for _ in scu.find(link, sop_classes.STUDY_ROOT_FIND, identifier, deadline=time.monotonic() + 0.5):
            pass
    assert _played(outcome) < 50  # cut off well before the peer was done


def test_a_value_pydicom_cannot_convert_is_a_protocol_error_when_read_not_later():
    """SOP Instance UID sent with VR US and 3 bytes: pydicom only fails when the value is first
    read, which must be inside decode (callers expect a ProtocolError, not pydicom's exception)."""
    raw = bytes.fromhex("08001800") + b"US" + (3).to_bytes(2, "little") + b"\x01\x02\x03"
    with pytest.raises(pdu.ProtocolError, match="unreadable data set"):
        scu.decode(raw, implicit=False)
