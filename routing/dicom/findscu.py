"""SynthIQ's own blocking C-FIND client, for the study ledger's questions (adopt, verify): one
association, one C-FIND, each response read as it arrives, the Release.

On SynthIQ's DICOM client (``routing.dicom.scu``: the association, the framing, the bounds
and checks on everything the peer sends), but with a lean identifier codec rather than
pydicom Datasets, because a ledger query may have tens of thousands of Pending responses:
here a response is a few slices of the received bytes (the repeated Pending command set is
decoded once), and only the attributes asked for are read (``identifiers.decode``).

Every failure is raised as ``scu.Unreachable`` naming the backend. Blocking: for management
commands and worker threads, never an event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from routing.dicom import commands, identifiers
from routing.dicom.pdu import ProtocolError
from routing.dicom.scu import Link, Peer, associate, status_of
from routing.dicom.status import PENDING

# What SynthIQ announces as its Maximum Length Received: P-DATA-TF PDUs above it are refused.
MAX_PDU = 65536


@dataclass(frozen=True, slots=True)
class Response:
    """One C-FIND response: its status and the wanted attributes of its identifier."""

    status: int
    values: dict[int, str]


@dataclass(frozen=True, slots=True)
class _Search:
    """Our C-FIND on the association: its context, its Message ID, and its identifiers' VR."""

    context_id: int
    message_id: int
    implicit: bool


def _start(link: Link, model: str, query: Iterable[tuple[int, str, str]]) -> _Search:
    context_id = link.context_id(model)
    search = _Search(context_id, link.next_id(), link.implicit(context_id))
    command = commands.encode({commands.AFFECTED_SOP_CLASS_UID: model, commands.COMMAND_FIELD: commands.C_FIND_RQ,
                               commands.MESSAGE_ID: search.message_id, commands.PRIORITY: 0,
                               commands.DATA_SET_TYPE: 0x0000})
    link.send(context_id, command, identifiers.encode(query, implicit=search.implicit))
    return search


def _responses(link: Link, search: _Search, wanted: frozenset[int]) -> Iterator[Response]:
    """The C-FIND-RSPs to our request, each within the timeout, the final one last."""
    command, code = None, 0
    while True:
        message = link.response(search.context_id, search.message_id, commands.C_FIND_RSP)
        if message.command is not command:  # every Pending one is the same command set, read once
            command, code = message.command, status_of(message)
        values = {}
        if code in PENDING and message.data is not None:
            values = identifiers.decode(message.data, wanted, implicit=search.implicit)
        yield Response(code, values)
        if code not in PENDING:
            return


def _stop(link: Link, search: _Search, rest: Iterator[Response] | None) -> None:
    """End the association of a caller that stopped reading: cancel the search if it was
    still going (C-CANCEL, then read on to its final response); the association is released
    on the way out. Aborts when the peer does not go along. Never raises."""
    if rest is None:
        return
    command = commands.encode({commands.COMMAND_FIELD: commands.C_CANCEL_RQ,
                               commands.MESSAGE_ID_RESPONDED_TO: search.message_id,
                               commands.DATA_SET_TYPE: commands.NO_DATA_SET})
    try:
        link.send(search.context_id, command)
        deadline = time.monotonic() + link.association.timeout
        for _ in rest:  # the Pending ones still in flight, then 0xFE00 (or whatever ended it)
            if time.monotonic() > deadline:
                raise TimeoutError("it went on answering after the C-CANCEL")
    except (OSError, ProtocolError, commands.CommandError, identifiers.IdentifierError):
        link.abort()


def find(peer: Peer, *, calling_ae: str, model: str, query: Iterable[tuple[int, str, str]],
         wanted: frozenset[int], timeout: float) -> Iterator[Response]:
    """Each response of one C-FIND of ``query`` ((tag, VR, value) keys) to ``peer``: Pending
    ones with the ``wanted`` attributes of their identifier, then the final one. A caller that
    stops reading early gets the search cancelled (C-CANCEL). Raises Unreachable."""
    with associate(peer, calling_ae=calling_ae, contexts=[(model, identifiers.SYNTAXES)], timeout=timeout,
                   max_pdu=MAX_PDU) as link:
        search = _start(link, model, query)
        responses = _responses(link, search, wanted)
        ended = False
        try:
            for response in responses:
                ended = response.status not in PENDING
                yield response
        except GeneratorExit:
            _stop(link, search, None if ended else responses)
            raise
