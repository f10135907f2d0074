"""SynthIQ as a plain DICOM client: every short association it opens on its own account (the
health and syntax probes, the ledger's and the locator's C-FINDs, the ledger's C-MOVE, storage
commitment shares and reports) goes through ``associate`` here.

``associate`` connects (TLS when the peer has it), negotiates with ``negotiation.own_request``
and hands back a ``Link``: the accepted contexts, the peer's max PDU, and one DIMSE message
sent (``send``) or read (``receive``, ``response``) at a time. The association itself is a
``blocking.BlockingAssociation``: the relay's framer and protocol state, driven by a blocking
socket. Small functions below (``echo``, ``find``, ``move``, ``n_action``, ``await_report``,
``event_report``) are the services SynthIQ uses; data sets are encoded and read by pydicom in
the Little Endian syntax the context was accepted in.

Everything the peer sends is untrusted: SynthIQ announces ``MAX_PDU`` and refuses a larger
P-DATA-TF, a command set and a data set are bounded, each message must arrive within the
timeout, and a response must answer our message on its context. Every failure, the peer's
rejection included, ends the association (an A-ABORT when it was still up) and is raised as
``Unreachable`` naming the peer. Blocking: for management commands, probe and executor
threads, never an event loop.
"""

from __future__ import annotations

import io
import socket
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from routing.dicom import commands, identifiers, negotiation, sop_classes
from routing.dicom.association import AssociateAccepted, AssociateRejected, DataReceived, ReleaseRequested, ending
from routing.dicom.blocking import BlockingAssociation
from routing.dicom.netopts import ClientTls, client_tls, tune
from routing.dicom.pdu import PDV_OVERHEAD, Pdv, ProtocolError, fragments, pdvs
from routing.dicom.status import CANCEL, PENDING, SUCCESS

# What SynthIQ announces as its Maximum Length Received: P-DATA-TF PDUs above it are refused.
MAX_PDU = 65536
MAX_OTHER_PDU = 64 * 1024  # any other PDU: an A-ASSOCIATE-AC of 128 contexts is a few KB
MAX_COMMAND = 16 * 1024  # a command set is a few hundred bytes
# A data set SynthIQ reads as a client: an identifier, or a commitment report, whose share
# came from a requester's N-ACTION (at most Network.HeaderHoldBytes, 1 MiB by default).
MAX_DATA_SET = 16 * 1024 * 1024
# N-EVENT-REPORTs a peer may send on an N-ACTION's association before that action's response.
MAX_REPORTS_BEFORE_RESPONSE = 8
# The syntaxes a context that carries data sets is proposed in: pydicom reads and writes both.
DATA_SET_SYNTAXES = identifiers.SYNTAXES

Context = tuple[str, Sequence[str]]  # (abstract syntax, transfer syntaxes in order of preference)


@dataclass(frozen=True)
class Peer:
    """Whom SynthIQ calls: a backend (``id`` its id), or a requester (``id`` its AE title)."""

    id: str
    ae_title: str
    host: str
    port: int
    tls: ClientTls | None = None


class Unreachable(OSError):
    """The peer could not be associated with or broke off (``rejected``: it said no), or
    accepted none of the contexts asked for. ``cause`` is what went wrong underneath (a
    refused connection, a timeout, the peer's abort, a protocol error), if anything."""

    def __init__(self, message: str, *, rejected: bool = False, cause: BaseException | None = None):
        super().__init__(message)
        self.rejected = rejected
        self.cause = cause


# What ends an association as the peer's (or the network's) fault.
_FAILURES = (OSError, ProtocolError, commands.CommandError, identifiers.IdentifierError)


class Message(NamedTuple):  # a tuple: made once per response of a search that may have tens of thousands
    """One DIMSE message: its context, its command set, and its data set's bytes if it has one."""

    context_id: int
    command: commands.Command
    data: bytes | None


class Link:
    """An established association (see the module docstring)."""

    def __init__(self, association: BlockingAssociation, accepted: negotiation.BackendAccept,
                 proposed: dict[int, Context], roles: Sequence[tuple[str, bool, bool]]):
        self.association = association
        # Context ID -> (abstract syntax, the transfer syntax accepted), in proposal order; a
        # context the peer says it accepted in a syntax it was not offered counts as refused.
        self.contexts = {cid: (proposed[cid][0], ts) for cid, ts in sorted(accepted.contexts.items())
                         if cid in proposed and ts in proposed[cid][1]}
        self.max_pdu = accepted.max_pdu  # the peer's (0: no limit announced)
        # SOP classes SynthIQ may act as the SCP of here: it proposed the role and the peer agreed.
        self.scp_classes = frozenset(uid for uid, _, scp in roles
                                     if scp and accepted.roles.get(uid, (True, False))[1])
        self._pdvs: deque[Pdv] = deque()
        self._message_id = 0
        self._last: commands.Command | None = None  # the last command set read (Pending ones repeat)
        self._last_has_data_set = False
        self._checked: tuple[commands.Command | None, int, int] = (None, 0, 0)  # (command, message ID, field)

    def context_id(self, abstract_syntax: str) -> int:
        """The first context accepted for ``abstract_syntax``; Unreachable when there is none."""
        for context_id, (abstract, _) in self.contexts.items():
            if abstract == abstract_syntax:
                return context_id
        raise Unreachable(f"did not accept {abstract_syntax}")

    def implicit(self, context_id: int) -> bool:
        """Whether data sets on ``context_id`` are Implicit VR (else Explicit VR Little Endian)."""
        return self.contexts[context_id][1] == identifiers.IMPLICIT_VR_LITTLE_ENDIAN

    def next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    @property
    def open(self) -> bool:
        return self.association.state.established

    def send(self, context_id: int, command: bytes, data: bytes | None = None) -> None:
        """One message, fragmented to the peer's max PDU."""
        out = fragments(context_id, command, command=True, last=True, max_pdu=self.max_pdu)
        if data is not None:
            out += fragments(context_id, data, command=False, last=True, max_pdu=self.max_pdu)
        self.association.send(b"".join(out))

    def receive(self, *, within: float | None = None) -> Message | None:
        """The peer's next whole message: its first PDU within ``within`` seconds (default the
        timeout), the whole of it within the timeout from then. None when the peer asked to
        release instead (answered: the association is over)."""
        self.association.arm(within)
        if not self._pdvs and not self._fill(release_allowed=True):
            return None
        if within is not None:
            self.association.arm()
        first = self._next_pdv()
        if not first.is_command:
            raise ProtocolError(f"a data set fragment on context {first.context_id} where a command was due")
        raw = self._gather(first, MAX_COMMAND)
        if self._last is None or self._last.raw != raw:
            self._last = commands.decode(raw)
            self._last_has_data_set = self._last.has_data_set
        command = self._last
        data = None
        if self._last_has_data_set:
            start = self._next_pdv()
            if start.is_command or start.context_id != first.context_id:
                raise ProtocolError("a command set where its data set was due")
            data = self._gather(start, MAX_DATA_SET)
        return Message(first.context_id, command, data)

    def response(self, context_id: int, message_id: int, field: int) -> Message:
        """The next message, which must be the ``field`` response to ``message_id`` on
        ``context_id`` with a status; anything else is a ProtocolError."""
        message = self.receive()
        if message is None:
            raise ProtocolError("released the association while a response was due")
        checked = self._checked
        # A search's Pending command sets repeat: the same one, read once, is checked once.
        if (message.command is not checked[0] or message.context_id != context_id
                or (message_id, field) != checked[1:]):
            answering(message, context_id, message_id, field)
            self._checked = (message.command, message_id, field)
        return message

    def abort(self) -> None:
        _abort(self.association)

    def _fill(self, *, release_allowed: bool = False) -> bool:
        """Read PDUs until a PDV is at hand; False when the peer asked to release instead (allowed
        between messages only: answered, the association is over). Any other event ends it."""
        while not self._pdvs:
            event = self.association.event()
            if isinstance(event, DataReceived):
                self._pdvs.extend(pdvs(event.pdu))
            elif release_allowed and isinstance(event, ReleaseRequested):
                self.association.send(self.association.state.release_reply())
                return False
            else:
                raise ending(event, who="it")
        return True

    def _next_pdv(self) -> Pdv:
        if not self._pdvs:
            self._fill()
        pdv = self._pdvs.popleft()
        if pdv.context_id not in self.contexts:
            raise ProtocolError(f"a PDV on presentation context {pdv.context_id}, which was not accepted")
        return pdv

    def _gather(self, first: Pdv, limit: int) -> bytes:
        """A command set or data set from its fragments, ``first`` the one already read."""
        what = "command set" if first.is_command else "data set"
        if first.is_last:  # usually the only fragment: no copy into a list first
            if len(first.data) > limit:
                raise ProtocolError(f"a {what} over {limit} bytes")
            return bytes(first.data)
        # Each fragment counts with its item header, so empty ones cannot go on for ever; the
        # bytes are copied out, so no received buffer is kept alive by a view of a few bytes of it.
        gathered, size, pdv = bytearray(first.data), len(first.data) + PDV_OVERHEAD, first
        while not pdv.is_last:
            pdv = self._next_pdv()
            if pdv.is_command != first.is_command or pdv.context_id != first.context_id:
                raise ProtocolError(f"a fragment of another message inside a {what}")
            size += len(pdv.data) + PDV_OVERHEAD
            if size > limit:
                raise ProtocolError(f"a {what} over {limit} bytes (with its fragments' headers)")
            gathered += pdv.data
        return bytes(gathered)


def answering(message: Message, context_id: int, message_id: int, field: int) -> Message:
    """``message`` when it is the ``field`` response to ``message_id`` on ``context_id``, with a status."""
    command = message.command
    if command.field != field or command.responded_to != message_id or message.context_id != context_id:
        raise ProtocolError(f"sent {command.name} (0x{command.field:04X}) for message {command.responded_to} "
                            f"on context {message.context_id}, not the response to message {message_id} "
                            f"on context {context_id}")
    if command.status is None:
        raise ProtocolError(f"a {command.name} response without a status")
    return message


# -- the association ----------------------------------------------------------------------


def _connect(peer: Peer, timeout: float) -> socket.socket:
    sock = socket.create_connection((peer.host, peer.port), timeout=timeout)
    tune(sock)
    if peer.tls is None:
        return sock
    try:
        return client_tls(peer.tls).wrap_socket(sock, server_hostname=peer.host)
    except BaseException:
        sock.close()
        raise


def _establish(association: BlockingAssociation, peer: Peer, *, calling_ae: str, proposed: dict[int, Context],
               roles: Sequence[tuple[str, bool, bool]], max_pdu: int, require_context: bool) -> Link:
    answer = association.request(negotiation.own_request(calling_ae=calling_ae, called_ae=peer.ae_title,
                                                         contexts=proposed, max_pdu=max_pdu, roles=roles))
    if isinstance(answer, AssociateRejected):
        raise Unreachable(f"rejected the association ({negotiation.rejection_text(answer.pdu.raw)})", rejected=True)
    if not isinstance(answer, AssociateAccepted):
        raise ending(answer, who="it")
    link = Link(association, negotiation.decode_associate_ac(answer.pdu.raw), proposed, roles)
    if require_context and not link.contexts:
        raise Unreachable("accepted none of the presentation contexts proposed")
    return link


@contextmanager
def associate(peer: Peer, *, calling_ae: str, contexts: Sequence[Context], timeout: float,
              roles: Sequence[tuple[str, bool, bool]] = (), max_pdu: int = MAX_PDU,
              require_context: bool = True) -> Iterator[Link]:
    """An established association to ``peer`` proposing ``contexts`` (IDs 1, 3, 5, ... in
    order; at most 128) and the SCP/SCU role selection ``roles`` ((SOP class, SCU role, SCP
    role)); released on exit, aborted when anything fails. Raises Unreachable, also when the
    peer accepts none of the contexts unless ``require_context`` is false."""
    where = f"association to {peer.id} ({peer.host}:{peer.port}, {peer.ae_title!r})"
    proposed = {2 * n + 1: context for n, context in enumerate(contexts)}
    try:
        sock = _connect(peer, timeout)
    except OSError as exc:
        raise Unreachable(f"{where}: cannot connect: {exc}", cause=exc) from None
    association = BlockingAssociation(sock, timeout, max_pdata=max_pdu, max_other=MAX_OTHER_PDU)
    try:
        link = _establish(association, peer, calling_ae=calling_ae, proposed=proposed, roles=roles,
                          max_pdu=max_pdu, require_context=require_context)
        yield link
        _release(association)
    except Unreachable as exc:
        _abort(association)
        raise Unreachable(f"{where}: {exc}", rejected=exc.rejected, cause=exc.cause) from None
    except _FAILURES as exc:
        _abort(association)
        raise Unreachable(f"{where}: {exc or type(exc).__name__}", cause=exc) from None
    except GeneratorExit:  # a generator holding the association was closed once it had ended its operation
        _release(association)
        raise
    except BaseException:  # the caller's own exception: the association goes
        _abort(association)
        raise
    finally:
        sock.close()


def _release(association: BlockingAssociation) -> None:
    """Release once the work is done. The answers are in hand by then, so a peer that drops
    or aborts instead of answering costs nothing but an abort. Never raises."""
    if association.state.over:
        return  # the peer released first (answered), or aborted
    try:
        association.release()
    except _FAILURES:
        _abort(association)


def _abort(association: BlockingAssociation) -> None:
    if not association.state.over:
        association.abort()


# -- data sets ----------------------------------------------------------------------------


def encode(ds: Dataset, *, implicit: bool) -> bytes:
    """A data set in Implicit or Explicit VR Little Endian."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def decode(data: bytes, *, implicit: bool) -> Dataset:
    """A data set the peer sent; ProtocolError when pydicom cannot read it."""
    try:
        dataset = read_dataset(io.BytesIO(data), implicit, True)
        for _ in dataset.iterall():  # pydicom converts a value when first read: all of them here, not in a caller
            pass
    except Exception as exc:  # pydicom raises many types on a malformed data set
        raise ProtocolError(f"an unreadable data set: {exc}") from None
    return dataset


# -- the services -------------------------------------------------------------------------


def status_of(response: Message) -> int:
    """A response's status (``answering`` has checked it has one)."""
    code = response.command.status
    if code is None:  # not reached: ``answering`` refuses a response without one
        raise ProtocolError(f"a {response.command.name} response without a status")
    return code


def _request(link: Link, context_id: int, elements: dict[int, int | str | bytes | list[int]],
             data: bytes | None = None) -> int:
    """Send one request (``elements`` plus a Message ID and the Command Data Set Type); its Message ID."""
    message_id = link.next_id()
    command = {**elements, commands.MESSAGE_ID: message_id,
               commands.DATA_SET_TYPE: commands.NO_DATA_SET if data is None else 0x0000}
    link.send(context_id, commands.encode(command), data)
    return message_id


# The command elements of a DIMSE-N request that carries a data set: its SOP class, its SOP
# instance and its type (PS3.7 10.3.4 N-ACTION: the Requested ones; 10.3.1 N-EVENT-REPORT: the Affected ones).
_N_ACTION_TAGS = (commands.REQUESTED_SOP_CLASS_UID, commands.REQUESTED_SOP_INSTANCE_UID, commands.ACTION_TYPE_ID)
_N_EVENT_REPORT_TAGS = (commands.AFFECTED_SOP_CLASS_UID, commands.AFFECTED_SOP_INSTANCE_UID, commands.EVENT_TYPE_ID)


def _n_request(link: Link, context_id: int, field: int, tags: tuple[int, int, int], sop_instance: str,
               type_id: int, information: Dataset) -> int:
    """Send one DIMSE-N request on the context's SOP class, ``information`` its data set; its Message ID."""
    class_tag, instance_tag, type_tag = tags
    return _request(link, context_id, {class_tag: link.contexts[context_id][0], commands.COMMAND_FIELD: field,
                                       instance_tag: sop_instance, type_tag: type_id},
                    encode(information, implicit=link.implicit(context_id)))


def echo(link: Link) -> int:
    """One C-ECHO; its status."""
    context_id = link.context_id(sop_classes.VERIFICATION)
    message_id = _request(link, context_id, {commands.AFFECTED_SOP_CLASS_UID: sop_classes.VERIFICATION,
                                             commands.COMMAND_FIELD: commands.C_ECHO_RQ})
    return status_of(link.response(context_id, message_id, commands.C_ECHO_RSP))


def find(link: Link, model: str, identifier: Dataset, *, deadline: float | None = None) -> Iterator[Dataset]:
    """The matches of one C-FIND; raises LookupError when it ends in a failure status, and
    TimeoutError when it is still going at ``deadline`` (monotonic clock): each Pending
    response in time is not enough, a peer could send them for ever."""
    context_id = link.context_id(model)
    implicit = link.implicit(context_id)
    message_id = _request(link, context_id, {commands.AFFECTED_SOP_CLASS_UID: model,
                                             commands.COMMAND_FIELD: commands.C_FIND_RQ, commands.PRIORITY: 0},
                          encode(identifier, implicit=implicit))
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("the C-FIND was still going at its deadline")
        message = link.response(context_id, message_id, commands.C_FIND_RSP)
        code = status_of(message)
        if code in PENDING:
            if message.data is not None:
                yield decode(message.data, implicit=implicit)
            continue
        if code not in (SUCCESS, CANCEL):
            raise LookupError(f"C-FIND answered 0x{code:04X}")
        return


def move(link: Link, model: str, identifier: Dataset, destination_ae: str) -> commands.Command:
    """One C-MOVE to ``destination_ae``: its final response (status, sub-operation counts),
    each Pending one read within the timeout."""
    context_id = link.context_id(model)
    message_id = _request(link, context_id, {commands.AFFECTED_SOP_CLASS_UID: model,
                                             commands.COMMAND_FIELD: commands.C_MOVE_RQ, commands.PRIORITY: 0,
                                             commands.MOVE_DESTINATION: destination_ae},
                          encode(identifier, implicit=link.implicit(context_id)))
    while True:
        command = link.response(context_id, message_id, commands.C_MOVE_RSP).command
        if command.status not in PENDING:  # a failure's identifier (Failed SOP Instance UID List) is dropped
            return command


def _answer_report(link: Link, message: Message) -> bytes:
    """Answer the peer's N-EVENT-REPORT-RQ with Success; its event information. Any other
    request is a ProtocolError: SynthIQ serves nothing else on its own associations."""
    command = message.command
    if command.field != commands.N_EVENT_REPORT_RQ or command.message_id is None or message.data is None:
        raise ProtocolError(f"sent {command.name} (0x{command.field:04X}) where a response or report was due")
    link.send(message.context_id, commands.response(command, SUCCESS))
    return message.data


def n_action(link: Link, context_id: int, *, sop_instance: str, action_type: int,
             information: Dataset) -> tuple[int, list[bytes]]:
    """One N-ACTION: (its status, the event information of any N-EVENT-REPORT the peer sent
    before its response, each answered with Success)."""
    message_id = _n_request(link, context_id, commands.N_ACTION_RQ, _N_ACTION_TAGS, sop_instance, action_type,
                            information)
    reports: list[bytes] = []
    # The response is due within the timeout however many reports come first, and only a few may.
    deadline = time.monotonic() + link.association.timeout
    while True:
        message = link.receive(within=max(0.0, deadline - time.monotonic()))
        if message is None:
            raise ProtocolError("released the association while a response was due")
        if not message.command.is_request:
            return status_of(answering(message, context_id, message_id, commands.N_ACTION_RSP)), reports
        if len(reports) == MAX_REPORTS_BEFORE_RESPONSE:
            raise ProtocolError(f"sent more than {MAX_REPORTS_BEFORE_RESPONSE} reports where its N-ACTION "
                                "response was due")
        reports.append(_answer_report(link, message))


def await_report(link: Link, *, within: float) -> bytes | None:
    """The event information of an N-EVENT-REPORT the peer starts sending within ``within``
    seconds, answered with Success; None when none came, or the peer released, aborted or
    closed the connection instead (its N-ACTION response stands)."""
    try:
        message = link.receive(within=within)
    except (TimeoutError, ConnectionError):  # none came; or it aborted or hung up after its answer
        return None
    return None if message is None else _answer_report(link, message)


def event_report(link: Link, context_id: int, *, sop_instance: str, event_type: int, information: Dataset) -> int:
    """One N-EVENT-REPORT (this side the SCP of the context's SOP class); the peer's status."""
    message_id = _n_request(link, context_id, commands.N_EVENT_REPORT_RQ, _N_EVENT_REPORT_TAGS, sop_instance,
                            event_type, information)
    return status_of(link.response(context_id, message_id, commands.N_EVENT_REPORT_RSP))
