"""The association's protocol state (routing.dicom.association), byte by byte: no socket, no process.

Every transition in the tables, each side of a release collision, and every PDU a state does
not expect (PS3.8 AA-8: an A-ABORT with reason "unexpected PDU") — including the abort paths
the relay uses: a PDU before the association request, a release reply nobody asked for, data
after the peer's release request, an association answer on an established association.
"""

from __future__ import annotations

import itertools

import pytest

from routing.dicom import pdu
from routing.dicom.association import (
    LOCAL,
    RECEIVED,
    Aborted,
    AssociateAccepted,
    AssociateRejected,
    AssociateRequested,
    Association,
    DataReceived,
    Ignored,
    ReleaseReplied,
    ReleaseRequested,
    Role,
    State,
    StateError,
    Violation,
)

# The smallest well-formed PDU of each type, as a peer would send it.
RAW = {
    pdu.A_ASSOCIATE_RQ: bytes([0x01, 0]) + (4).to_bytes(4, "big") + b"\x00\x01\x00\x00",
    pdu.A_ASSOCIATE_AC: bytes([0x02, 0]) + (4).to_bytes(4, "big") + b"\x00\x01\x00\x00",
    pdu.A_ASSOCIATE_RJ: bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1]),
    pdu.P_DATA_TF: pdu.pdata(1, pdu.MCH_COMMAND | pdu.MCH_LAST, b"\x00" * 8),
    pdu.A_RELEASE_RQ_TYPE: pdu.release_rq(),
    pdu.A_RELEASE_RP_TYPE: pdu.release_rp(),
    pdu.A_ABORT: pdu.abort(source=pdu.ABORT_SOURCE_USER, reason=0),
}


def parse(raw: bytes) -> pdu.Pdu:
    buffer = pdu.PduBuffer(max_length=1 << 16)
    buffer.feed(raw)
    got = buffer.next()
    assert got is not None
    return got


def at(state: State, role: Role = Role.ACCEPTOR) -> Association:
    association = Association(role)
    association.state = state
    return association


def established(role: Role) -> Association:
    association = Association(role)
    if role is Role.ACCEPTOR:
        assert isinstance(association.receive(parse(RAW[pdu.A_ASSOCIATE_RQ])), AssociateRequested)
        association.accept(b"ac")
    else:
        association.request(b"rq")
        assert isinstance(association.receive(parse(RAW[pdu.A_ASSOCIATE_AC])), AssociateAccepted)
    assert association.established
    return association


def test_an_acceptor_reads_the_request_answers_it_and_is_released():
    association = Association(Role.ACCEPTOR)
    assert association.state is State.AWAITING_REQUEST
    requested = association.receive(parse(RAW[pdu.A_ASSOCIATE_RQ]))
    assert isinstance(requested, AssociateRequested) and bytes(requested.pdu.raw) == RAW[pdu.A_ASSOCIATE_RQ]
    assert association.accept(b"the AC") == b"the AC" and association.established
    data = association.receive(parse(RAW[pdu.P_DATA_TF]))
    assert isinstance(data, DataReceived) and bytes(data.pdu.raw) == RAW[pdu.P_DATA_TF]
    assert association.receive(parse(RAW[pdu.A_RELEASE_RQ_TYPE])) == ReleaseRequested(collision=False)
    assert association.state is State.AWAITING_LOCAL_RELEASE_REPLY
    assert association.release_reply() == RAW[pdu.A_RELEASE_RP_TYPE] and association.over


def test_an_acceptor_can_reject_and_is_then_over():
    association = Association(Role.ACCEPTOR)
    association.receive(parse(RAW[pdu.A_ASSOCIATE_RQ]))
    assert association.reject(b"the RJ") == b"the RJ" and association.over


def test_a_requestor_is_answered_accepted_or_rejected_and_releases():
    rejected = Association(Role.REQUESTOR)
    assert rejected.request(b"rq") == b"rq" and rejected.state is State.AWAITING_ANSWER
    assert isinstance(rejected.receive(parse(RAW[pdu.A_ASSOCIATE_RJ])), AssociateRejected) and rejected.over
    association = established(Role.REQUESTOR)
    assert association.release_request() == RAW[pdu.A_RELEASE_RQ_TYPE]
    # PS3.8 AR-7: the peer may still send data while our release awaits its reply.
    assert isinstance(association.receive(parse(RAW[pdu.P_DATA_TF])), DataReceived)
    assert association.receive(parse(RAW[pdu.A_RELEASE_RP_TYPE])) == ReleaseReplied(final=True)
    assert association.over


def test_a_release_collision_as_requestor_answers_first_then_waits_for_the_reply():
    association = established(Role.REQUESTOR)
    association.release_request()
    assert association.receive(parse(RAW[pdu.A_RELEASE_RQ_TYPE])) == ReleaseRequested(collision=True)
    assert association.state is State.COLLISION_LOCAL_REPLY_DUE  # Sta9
    assert association.release_reply() == RAW[pdu.A_RELEASE_RP_TYPE]
    assert association.state is State.COLLISION_AWAITING_LAST_REPLY  # Sta11
    assert association.receive(parse(RAW[pdu.A_RELEASE_RP_TYPE])) == ReleaseReplied(final=True)
    assert association.over


def test_a_release_collision_as_acceptor_waits_for_the_requestors_reply_then_answers():
    association = established(Role.ACCEPTOR)
    association.release_request()
    assert association.receive(parse(RAW[pdu.A_RELEASE_RQ_TYPE])) == ReleaseRequested(collision=True)
    assert association.state is State.COLLISION_AWAITING_REPLY  # Sta10
    with pytest.raises(StateError):  # the requestor answers first
        association.release_reply()
    assert association.receive(parse(RAW[pdu.A_RELEASE_RP_TYPE])) == ReleaseReplied(final=False)
    assert association.state is State.COLLISION_LOCAL_LAST_REPLY_DUE  # Sta12
    association.release_reply()
    assert association.over


@pytest.mark.parametrize("state", [s for s in State if s is not State.CLOSING])
def test_an_abort_ends_the_association_in_every_state(state):
    association = at(state)
    event = association.receive(parse(pdu.abort(source=pdu.ABORT_SOURCE_PROVIDER, reason=pdu.REASON_UNEXPECTED_PDU)))
    assert event == Aborted(source=pdu.ABORT_SOURCE_PROVIDER, reason=pdu.REASON_UNEXPECTED_PDU)
    assert "unexpected PDU" in event.meaning and association.over


UNEXPECTED = [(state, kind) for state, kind in itertools.product(State, RAW)
              if state is not State.CLOSING and kind != pdu.A_ABORT and (state, kind) not in RECEIVED]


@pytest.mark.parametrize(("state", "kind"), UNEXPECTED)
def test_every_pdu_a_state_does_not_expect_is_a_violation_that_aborts_with_unexpected_pdu(state, kind):
    association = at(state)
    event = association.receive(parse(RAW[kind]))
    assert isinstance(event, Violation) and event.reason == pdu.REASON_UNEXPECTED_PDU
    assert state.value in event.text and association.over
    # What the caller then sends: an A-ABORT from the provider with that reason (AA-8).
    assert association.abort(reason=event.reason) == pdu.abort(reason=pdu.REASON_UNEXPECTED_PDU)


def test_the_relays_abort_paths_are_among_them():
    # A PDU before the association request; a release reply nobody asked for; data after the
    # peer's release request; an association answer on an established association.
    for state, kind in [(State.AWAITING_REQUEST, pdu.P_DATA_TF), (State.ESTABLISHED, pdu.A_RELEASE_RP_TYPE),
                        (State.AWAITING_LOCAL_RELEASE_REPLY, pdu.P_DATA_TF),
                        (State.ESTABLISHED, pdu.A_ASSOCIATE_AC), (State.AWAITING_ANSWER, pdu.P_DATA_TF)]:
        assert (state, kind) in UNEXPECTED


@pytest.mark.parametrize("kind", list(RAW))
def test_after_the_end_every_pdu_is_ignored(kind):
    association = at(State.CLOSING)
    assert association.receive(parse(RAW[kind])) == Ignored() and association.over


@pytest.mark.parametrize(("action", "state"), [(action, state) for action, (allowed, _) in LOCAL.items()
                                               for state in State if state not in allowed and action != "abort"])
def test_a_local_action_in_a_state_that_does_not_allow_it_is_a_bug_and_changes_nothing(action, state):
    association = at(state)
    with pytest.raises(StateError):
        call = getattr(association, action)
        call(b"x") if action in ("request", "accept", "reject") else call()
    assert association.state is state


def test_an_abort_can_be_sent_in_any_state_and_after_the_end():
    for state in State:
        association = at(state)
        assert association.abort(reason=pdu.REASON_NOT_SPECIFIED) == pdu.abort()
        assert association.over


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_an_abort_too_short_for_its_source_and_reason_still_ends_the_association(length):
    """A peer's A-ABORT of fewer than 4 bytes after its header: an abort all the same, never a
    decoding error (a struct.error from it once escaped every caller's handler)."""
    association = established(Role.REQUESTOR)
    event = association.receive(parse(bytes([pdu.A_ABORT, 0]) + length.to_bytes(4, "big") + b"\x00" * length))
    assert isinstance(event, Aborted) and (event.source, event.reason) == (0, 0) and association.over


def test_a_rejection_too_short_for_its_fields_is_named_as_malformed():
    from routing.dicom.negotiation import rejection_text

    assert rejection_text(bytes([pdu.A_ASSOCIATE_RJ, 0, 0, 0, 0, 0])) == "a malformed A-ASSOCIATE-RJ of 6 bytes"
    assert rejection_text(bytes([pdu.A_ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, 9, 9, 9])).startswith("result 9")
