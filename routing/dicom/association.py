"""One DICOM association's protocol state, with no I/O: PDUs in, typed events out.

PS3.8 9.2 describes the upper layer as a state machine (states Sta1-Sta13, events, actions).
``Association`` keeps that state for one side of one association: ``receive`` takes a PDU
the peer sent and returns what it means here (an ``Event``), and the local actions
(``request``, ``accept``, ``reject``, ``release_request``, ``release_reply``, ``abort``) return
the bytes to send. What may happen in which state is written once, in ``RECEIVED`` and
``LOCAL``; PDUs a state does not expect become a ``Violation`` event carrying the A-ABORT
reason PS3.8 gives it (AA-8: unexpected PDU), never an exception. A release request or reply
is an event like any other. Nothing here reads or writes a socket: the relay's connections
(``routing.relay``) feed it, and the tests drive it byte by byte.

P-DATA-TF PDUs that carry a message are not copied or re-encoded here: ``receive`` classifies
them (``DataReceived``) and the caller decodes their PDVs; what SynthIQ writes as P-DATA goes
out without passing through this object (relaying bulk data must cost nothing per PDU here).

A-ASSOCIATE-RQ/AC/RJ contents are decoded by ``routing.dicom.negotiation``; this object only
says which of them may come when.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from routing.dicom import pdu
from routing.dicom.pdu import Pdu


class State(enum.Enum):
    """PS3.8 Table 9-1's states this side can be in (Sta1 and Sta4 are the transport's)."""

    AWAITING_REQUEST = "Sta2"  # acceptor: connected, the A-ASSOCIATE-RQ is due
    AWAITING_LOCAL_ANSWER = "Sta3"  # acceptor: the request read, our AC or RJ is due
    REQUESTING = "Sta4"  # requestor: connected, our A-ASSOCIATE-RQ not sent yet
    AWAITING_ANSWER = "Sta5"  # requestor: our request sent, the AC or RJ is due
    ESTABLISHED = "Sta6"
    AWAITING_RELEASE_REPLY = "Sta7"  # we asked to release
    AWAITING_LOCAL_RELEASE_REPLY = "Sta8"  # the peer asked, our A-RELEASE-RP is due
    COLLISION_LOCAL_REPLY_DUE = "Sta9"  # requestor, both asked at once: we answer first
    COLLISION_AWAITING_REPLY = "Sta10"  # acceptor, both asked at once: the requestor answers first
    COLLISION_AWAITING_LAST_REPLY = "Sta11"  # requestor, collision: we answered, the peer's reply is due
    COLLISION_LOCAL_LAST_REPLY_DUE = "Sta12"  # acceptor, collision: the peer answered, ours is due
    CLOSING = "Sta13"  # released, rejected or aborted: only the transport's close is left


class Role(enum.Enum):
    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


# -- events -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Event:
    """What a PDU from the peer means in the state it arrived in."""


@dataclass(frozen=True, slots=True)
class PduEvent(Event):
    """An event that carries its PDU: the caller decodes what is in it."""

    pdu: Pdu


class AssociateRequested(PduEvent):
    """The peer's A-ASSOCIATE-RQ (``negotiation.decode_associate_rq``)."""


class AssociateAccepted(PduEvent):
    """The peer's A-ASSOCIATE-AC (``negotiation.decode_associate_ac``)."""


class AssociateRejected(PduEvent):
    """The peer's A-ASSOCIATE-RJ (``negotiation.rejection_text``)."""


class DataReceived(PduEvent):
    """A P-DATA-TF (``pdu.pdvs``)."""


@dataclass(frozen=True, slots=True)
class ReleaseRequested(Event):
    """The peer asked to release; ``collision`` when we had asked too."""

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseReplied(Event):
    """The peer answered a release; ``final`` when the association is over (not mid-collision)."""

    final: bool = True


@dataclass(frozen=True, slots=True)
class Aborted(Event):
    source: int
    reason: int

    @property
    def meaning(self) -> str:
        return pdu.abort_meaning(self.source, self.reason)


@dataclass(frozen=True, slots=True)
class Ignored(Event):
    """A PDU after the association ended (PS3.8 AA-6): nothing to do."""


@dataclass(frozen=True, slots=True)
class Violation(Event):
    """A PDU this state does not allow (PS3.8 AA-8). The association is over: the caller sends
    ``association.abort(reason=violation.reason)`` and closes."""

    text: str
    reason: int = pdu.REASON_UNEXPECTED_PDU


# -- the tables -----------------------------------------------------------------------------
S = State
_ACTIVE = frozenset(S) - {S.CLOSING}

# (state, PDU type received) -> (the event it is, the next state). A-ABORT is accepted in every
# state but CLOSING (AA-3); CLOSING ignores everything (AA-6). Anything else: AA-8.
RECEIVED: dict[tuple[State, int], tuple[Callable[..., Event], State]] = {
    (S.AWAITING_REQUEST, pdu.A_ASSOCIATE_RQ): (AssociateRequested, S.AWAITING_LOCAL_ANSWER),
    (S.AWAITING_ANSWER, pdu.A_ASSOCIATE_AC): (AssociateAccepted, S.ESTABLISHED),
    (S.AWAITING_ANSWER, pdu.A_ASSOCIATE_RJ): (AssociateRejected, S.CLOSING),
    (S.ESTABLISHED, pdu.P_DATA_TF): (DataReceived, S.ESTABLISHED),
    (S.ESTABLISHED, pdu.A_RELEASE_RQ_TYPE): (ReleaseRequested, S.AWAITING_LOCAL_RELEASE_REPLY),
    # Sta7: the peer may still finish what it was sending before it answers (AR-7).
    (S.AWAITING_RELEASE_REPLY, pdu.P_DATA_TF): (DataReceived, S.AWAITING_RELEASE_REPLY),
    (S.AWAITING_RELEASE_REPLY, pdu.A_RELEASE_RP_TYPE): (ReleaseReplied, S.CLOSING),
    # A collision: the next state depends on the role (see _collision).
    (S.AWAITING_RELEASE_REPLY, pdu.A_RELEASE_RQ_TYPE): (ReleaseRequested, S.COLLISION_LOCAL_REPLY_DUE),
    (S.COLLISION_AWAITING_REPLY, pdu.A_RELEASE_RP_TYPE): (ReleaseReplied, S.COLLISION_LOCAL_LAST_REPLY_DUE),
    (S.COLLISION_AWAITING_LAST_REPLY, pdu.A_RELEASE_RP_TYPE): (ReleaseReplied, S.CLOSING),
}

# Local action -> (the states it may be taken in, the next state).
LOCAL: dict[str, tuple[frozenset[State], State]] = {
    "request": (frozenset({S.REQUESTING}), S.AWAITING_ANSWER),
    "accept": (frozenset({S.AWAITING_LOCAL_ANSWER}), S.ESTABLISHED),
    "reject": (frozenset({S.AWAITING_LOCAL_ANSWER}), S.CLOSING),
    "release_request": (frozenset({S.ESTABLISHED}), S.AWAITING_RELEASE_REPLY),
    "release_reply": (frozenset({S.AWAITING_LOCAL_RELEASE_REPLY, S.COLLISION_LOCAL_REPLY_DUE,
                                 S.COLLISION_LOCAL_LAST_REPLY_DUE}), S.CLOSING),  # see release_reply
    "abort": (_ACTIVE, S.CLOSING),
}


class PeerAborted(ConnectionError):
    """The peer's A-ABORT ended what was in flight; ``who`` names the peer in the message."""

    def __init__(self, who: str, source: int, reason: int):
        super().__init__(f"{who} sent A-ABORT ({pdu.abort_meaning(source, reason)})")
        self.source, self.reason = source, reason


def ending(event: Event, *, who: str = "the peer") -> Exception:
    """The exception that ends an operation when ``event`` comes while a message was due:
    the peer's abort (``PeerAborted``), a PDU the state does not allow (a ``ProtocolError``
    with the Violation's A-ABORT reason), or any other event, a release request included, as
    an unexpected PDU. The relay's message stream and SynthIQ's own client both end this way."""
    if isinstance(event, Aborted):
        return PeerAborted(who, event.source, event.reason)
    if isinstance(event, Violation):
        return pdu.ProtocolError(event.text, event.reason)
    return pdu.ProtocolError(f"{type(event).__name__} while a message was due", pdu.REASON_UNEXPECTED_PDU)


class StateError(RuntimeError):
    """SynthIQ itself tried an action its state does not allow: a bug, never the peer's doing."""


class Association:
    def __init__(self, role: Role):
        self.role = role
        self.state = S.AWAITING_REQUEST if role is Role.ACCEPTOR else S.REQUESTING

    @property
    def established(self) -> bool:
        return self.state is S.ESTABLISHED

    @property
    def over(self) -> bool:
        return self.state is S.CLOSING

    # -- from the peer -------------------------------------------------------------------
    def receive(self, got: Pdu) -> Event:
        """What ``got`` means now; the state moves on."""
        if self.state is S.CLOSING:
            return Ignored()
        if got.type == pdu.A_ABORT:
            self.state = S.CLOSING
            return Aborted(*pdu.abort_fields(got))
        entry = RECEIVED.get((self.state, got.type))
        if entry is None:
            was = self.state
            self.state = S.CLOSING
            return Violation(f"{_PDU_NAMES.get(got.type, f'PDU 0x{got.type:02X}')} in state {was.value} "
                             f"({_STATE_TEXT[was]})")
        kind, self.state = entry
        if kind is ReleaseRequested:
            return self._release_requested()
        if kind is ReleaseReplied:
            return ReleaseReplied(final=self.state is S.CLOSING)
        return kind(got)  # the events that carry their PDU

    def _release_requested(self) -> ReleaseRequested:
        if self.state is S.COLLISION_LOCAL_REPLY_DUE:  # both asked: PS3.8 AR-8
            if self.role is Role.ACCEPTOR:
                self.state = S.COLLISION_AWAITING_REPLY  # the requestor answers first
            return ReleaseRequested(collision=True)
        return ReleaseRequested()

    # -- local actions: the bytes to send ---------------------------------------------------
    def _take(self, action: str) -> None:
        allowed, after = LOCAL[action]
        if self.state not in allowed:
            raise StateError(f"{action} in state {self.state.value} ({_STATE_TEXT[self.state]})")
        self.state = after

    def request(self, associate_rq: bytes) -> bytes:
        self._take("request")
        return associate_rq

    def accept(self, associate_ac: bytes) -> bytes:
        self._take("accept")
        return associate_ac

    def reject(self, associate_rj: bytes) -> bytes:
        self._take("reject")
        return associate_rj

    def release_request(self) -> bytes:
        self._take("release_request")
        return pdu.release_rq()

    def release_reply(self) -> bytes:
        """Answer the peer's release. In a collision the requestor answers first and then
        waits for the acceptor's reply (Sta9 -> Sta11); otherwise the association is over."""
        collision_first = self.state is S.COLLISION_LOCAL_REPLY_DUE
        self._take("release_reply")
        if collision_first:
            self.state = S.COLLISION_AWAITING_LAST_REPLY
        return pdu.release_rp()

    def abort(self, *, source: int = pdu.ABORT_SOURCE_PROVIDER, reason: int = pdu.REASON_NOT_SPECIFIED) -> bytes:
        """A-ABORT; after the end it is still the bytes to send (a second abort is harmless)."""
        if self.state is not S.CLOSING:
            self._take("abort")
        return pdu.abort(source=source, reason=reason)


_PDU_NAMES = {pdu.A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ", pdu.A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
              pdu.A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ", pdu.P_DATA_TF: "P-DATA-TF", pdu.A_RELEASE_RQ_TYPE: "A-RELEASE-RQ",
              pdu.A_RELEASE_RP_TYPE: "A-RELEASE-RP", pdu.A_ABORT: "A-ABORT"}

_STATE_TEXT = {
    S.AWAITING_REQUEST: "before the association request",
    S.AWAITING_LOCAL_ANSWER: "while the association request is answered",
    S.REQUESTING: "before the association request was sent",
    S.AWAITING_ANSWER: "while the association request awaits its answer",
    S.ESTABLISHED: "on an established association",
    S.AWAITING_RELEASE_REPLY: "while a release awaits its reply",
    S.AWAITING_LOCAL_RELEASE_REPLY: "after the peer's release request",
    S.COLLISION_LOCAL_REPLY_DUE: "in a release collision",
    S.COLLISION_AWAITING_REPLY: "in a release collision",
    S.COLLISION_AWAITING_LAST_REPLY: "in a release collision",
    S.COLLISION_LOCAL_LAST_REPLY_DUE: "in a release collision",
    S.CLOSING: "after the association ended",
}
