"""SynthIQ's own blocking C-FIND client, for the study ledger's questions (adopt, verify): one
association, one C-FIND, each response read as it arrives, the Release.

Built on this package's PDU framing, command sets, negotiation and identifier codec rather
than pynetdicom's AE, because a ledger query may have tens of thousands of Pending
responses: pynetdicom hands each one from its DUL thread to its DIMSE thread to the caller,
decodes it into a pydicom Dataset and formats it for its log, which cost more than the
backend's own work. Here a response is a few slices of the received bytes, and only the
attributes asked for are read (``identifiers.decode``).

Everything the peer sends is untrusted: PDUs larger than SynthIQ announced are refused, a
command set and an identifier are bounded, each response must arrive within ``timeout``
(a peer dribbling bytes cannot hold a caller for ever), and every failure is raised as
``client.Unreachable`` naming the backend. Blocking: for management commands and worker
threads, never an event loop.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from routing.dicom import commands, identifiers, negotiation
from routing.dicom.association import Aborted, AssociateAccepted, AssociateRejected, DataReceived, Event, Violation
from routing.dicom.blocking import BlockingAssociation
from routing.dicom.client import Peer, Unreachable
from routing.dicom.netopts import client_tls, tune
from routing.dicom.pdu import Pdv, ProtocolError, fragments, pdvs
from routing.dicom.status import PENDING

# What SynthIQ announces as its Maximum Length Received: P-DATA-TF PDUs above it are refused.
MAX_PDU = 65536
# Any other PDU (an A-ASSOCIATE-AC with many contexts is a few KB).
MAX_OTHER_PDU = 64 * 1024
MAX_COMMAND = 16 * 1024  # a command set is a few hundred bytes
MAX_IDENTIFIER = 256 * 1024  # an identifier of a few attributes is far smaller
CONTEXT_ID = 1
MESSAGE_ID = 1


@dataclass(frozen=True, slots=True)
class Response:
    """One C-FIND response: its status and the wanted attributes of its identifier."""

    status: int
    values: dict[int, str]


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


def _associate(link: BlockingAssociation, *, calling_ae: str, called_ae: str, model: str) -> tuple[bool, int]:
    """Propose ``model`` in Explicit and Implicit VR Little Endian: (implicit VR accepted,
    the peer's max PDU). Raises Unreachable (rejected) or ProtocolError."""
    reply = link.request(negotiation.own_request(calling_ae=calling_ae, called_ae=called_ae, max_pdu=MAX_PDU,
                                                 contexts={CONTEXT_ID: (model, list(identifiers.SYNTAXES))}))
    if isinstance(reply, AssociateRejected):
        raise Unreachable(f"rejected the association ({negotiation.rejection_text(reply.pdu.raw)})", rejected=True)
    if not isinstance(reply, AssociateAccepted):
        raise _ended(reply, "the A-ASSOCIATE-RQ")
    accepted = negotiation.decode_associate_ac(reply.pdu.raw)
    syntax = accepted.contexts.get(CONTEXT_ID)
    if syntax not in identifiers.SYNTAXES:
        raise Unreachable(f"did not accept C-FIND ({model}) in Little Endian")
    return syntax == identifiers.IMPLICIT_VR_LITTLE_ENDIAN, accepted.max_pdu


def _ended(event: Event, during: str) -> Exception:
    """What ends the C-FIND when ``event`` comes instead of what was due."""
    if isinstance(event, Aborted):
        return ConnectionError(f"aborted the association: {event.meaning}")
    if isinstance(event, Violation):
        return ProtocolError(event.text, event.reason)
    return ProtocolError(f"{type(event).__name__} during {during}")


def _pdvs(link: BlockingAssociation) -> Iterator[Pdv]:
    """The PDV items of the P-DATA-TF PDUs that come; any other event ends the association."""
    while True:
        event = link.event()
        if not isinstance(event, DataReceived):
            raise _ended(event, "the C-FIND")
        yield from pdvs(event.pdu)


def _gather(items: Iterator[Pdv], *, command: bool, limit: int) -> bytes:
    """One command set or data set, from its fragments."""
    what = "command set" if command else "identifier"
    gathered = bytearray()
    for pdv in items:
        if pdv.context_id != CONTEXT_ID:
            raise ProtocolError(f"a PDV on presentation context {pdv.context_id}, not {CONTEXT_ID}")
        if pdv.is_command != command:
            raise ProtocolError(f"a {'command' if pdv.is_command else 'data set'} fragment inside a {what}")
        if len(gathered) + len(pdv.data) > limit:
            raise ProtocolError(f"a {what} over {limit} bytes")
        if pdv.is_last:  # usually the only fragment: no copy into the buffer first
            return bytes(gathered + pdv.data) if gathered else bytes(pdv.data)
        gathered += pdv.data
    raise ProtocolError(f"the {what} did not end")  # not reached: _pdvs raises first


def _checked(command: commands.Command) -> tuple[int, bool]:
    """(status, whether an identifier follows) of a C-FIND-RSP to our request; ProtocolError
    for anything else."""
    if command.field != commands.C_FIND_RSP or command.responded_to != MESSAGE_ID:
        raise ProtocolError(f"sent {command.name} (0x{command.field:04X}) for message {command.responded_to}, "
                            f"not a C-FIND-RSP to message {MESSAGE_ID}")
    if command.status is None:
        raise ProtocolError("a C-FIND-RSP without a status")
    return command.status, command.has_data_set


def _responses(link: BlockingAssociation, wanted: frozenset[int], *, implicit: bool) -> Iterator[Response]:
    """The C-FIND-RSPs to our request, each within the timeout, the final one last."""
    items = _pdvs(link)
    seen, code, has_data_set = b"", 0, False
    while True:
        link.arm()
        raw = _gather(items, command=True, limit=MAX_COMMAND)
        if raw != seen:  # every Pending command set is the same bytes: read once
            code, has_data_set = _checked(commands.decode(raw))
            seen = raw
        values = {}
        if has_data_set:
            data = _gather(items, command=False, limit=MAX_IDENTIFIER)
            if code in PENDING:
                values = identifiers.decode(data, wanted, implicit=implicit)
        yield Response(code, values)
        if code not in PENDING:
            return


def _request(model: str, query: Iterable[tuple[int, str, str]], *, implicit: bool, max_pdu: int) -> bytes:
    command = commands.encode({commands.AFFECTED_SOP_CLASS_UID: model, commands.COMMAND_FIELD: commands.C_FIND_RQ,
                               commands.MESSAGE_ID: MESSAGE_ID, commands.PRIORITY: 0,
                               commands.DATA_SET_TYPE: 0x0000})
    identifier = identifiers.encode(query, implicit=implicit)
    return b"".join([*fragments(CONTEXT_ID, command, command=True, last=True, max_pdu=max_pdu),
                     *fragments(CONTEXT_ID, identifier, command=False, last=True, max_pdu=max_pdu)])


def _cancel(link: BlockingAssociation, max_pdu: int, rest: Iterator[Response]) -> None:
    """C-CANCEL our request (the caller stopped reading) and read on to its final response."""
    command = commands.encode({commands.COMMAND_FIELD: commands.C_CANCEL_RQ,
                               commands.MESSAGE_ID_RESPONDED_TO: MESSAGE_ID,
                               commands.DATA_SET_TYPE: commands.NO_DATA_SET})
    link.send(b"".join(fragments(CONTEXT_ID, command, command=True, last=True, max_pdu=max_pdu)))
    for _ in rest:
        pass  # the Pending ones still in flight, then 0xFE00 (or whatever ended it)


def _stop(link: BlockingAssociation, max_pdu: int, rest: Iterator[Response] | None) -> None:
    """End the association of a caller that stopped reading: cancel the search if it was
    still going, release; abort when the peer does not go along. Never raises."""
    try:
        if rest is not None:
            _cancel(link, max_pdu, rest)
        link.release()
    except (OSError, ProtocolError, commands.CommandError, identifiers.IdentifierError):
        link.abort()


def find(peer: Peer, *, calling_ae: str, model: str, query: Iterable[tuple[int, str, str]],
         wanted: frozenset[int], timeout: float) -> Iterator[Response]:
    """Each response of one C-FIND of ``query`` ((tag, VR, value) keys) to ``peer``: Pending
    ones with the ``wanted`` attributes of their identifier, then the final one. A caller that
    stops reading early gets the search cancelled (C-CANCEL). Raises Unreachable."""
    where = f"C-FIND to {peer.id} ({peer.host}:{peer.port}, {peer.ae_title!r})"
    try:
        sock = _connect(peer, timeout)
    except OSError as exc:
        raise Unreachable(f"{where}: cannot connect: {exc}") from None
    link = BlockingAssociation(sock, timeout, max_pdata=MAX_PDU, max_other=MAX_OTHER_PDU)
    try:
        implicit, max_pdu = _associate(link, calling_ae=calling_ae, called_ae=peer.ae_title, model=model)
        link.send(_request(model, query, implicit=implicit, max_pdu=max_pdu))
        responses = _responses(link, wanted, implicit=implicit)
        ended = False
        try:
            for response in responses:
                ended = response.status not in PENDING
                yield response
        except GeneratorExit:
            _stop(link, max_pdu, None if ended else responses)
            raise
        link.release()
    except Unreachable as exc:
        link.abort()
        raise Unreachable(f"{where}: {exc}", rejected=exc.rejected) from None
    except (OSError, ProtocolError, commands.CommandError, identifiers.IdentifierError) as exc:
        link.abort()
        raise Unreachable(f"{where}: {exc or type(exc).__name__}") from None
    finally:
        sock.close()
