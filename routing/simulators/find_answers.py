"""The simulated backend's C-FIND Pending responses as bytes, written in batches straight to
the association's socket with SynthIQ's own encoders (command set, identifier, P-DATA-TF).

Through pynetdicom each response is a pydicom Dataset encoded, a DIMSE primitive, and PDUs
passed from thread to thread: about 2.5 ms of CPU per study, more than the client spends, and
a ledger's query without a date is answered with one response per study. The bytes here are
what a C-FIND SCP sends (PS3.7 9.3.2.2: a C-FIND-RSP command set per match, then its
identifier), for Little Endian contexts; the final response still goes through pynetdicom
after the handler returns. Nothing else is sent on the association while a C-FIND handler
runs, so the order on the wire holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from routing.dicom import commands, identifiers, pdu

# Bytes gathered before one write (and one look for a C-CANCEL).
BATCH_BYTES = 256 * 1024


def writable(event: Any) -> bool:
    """The context is one SynthIQ's identifier encoder writes (Little Endian, not deflated)."""
    return str(event.context.transfer_syntax) in identifiers.SYNTAXES


def _pending_command(event: Any, code: int) -> bytes:
    request = event.request
    return commands.encode({commands.AFFECTED_SOP_CLASS_UID: str(request.AffectedSOPClassUID),
                            commands.COMMAND_FIELD: commands.C_FIND_RSP,
                            commands.MESSAGE_ID_RESPONDED_TO: int(request.MessageID),
                            commands.DATA_SET_TYPE: 0x0000, commands.STATUS: code})


def send_pending(event: Any, code: int, answers: Iterable[list[tuple[int, str, str]]], *, limit: int) -> Iterator[int]:
    """Write a Pending ``code`` response per answer ((tag, VR, value) elements), at most
    ``limit`` (0: all). Yields nothing until done; then yields the final status to send:
    Success, or 0xFE00 when cut short by a C-CANCEL or by the limit with more to come."""
    implicit = str(event.context.transfer_syntax) == identifiers.IMPLICIT_VR_LITTLE_ENDIAN
    context_id = int(event.context.context_id)
    max_pdu = int(event.assoc.requestor.maximum_length or 0)
    command = pdu.fragments(context_id, _pending_command(event, code), command=True, last=True, max_pdu=max_pdu)
    batch: list[bytes] = []
    size = sent = 0
    for elements in answers:
        if limit and sent == limit:
            break
        batch += command
        batch += pdu.fragments(context_id, identifiers.encode(elements, implicit=implicit), command=False, last=True,
                               max_pdu=max_pdu)
        size += len(batch[-1]) + len(command[0])
        sent += 1
        if size >= BATCH_BYTES:
            if not _write(event, batch):
                return
            batch, size = [], 0
            if event.is_cancelled:
                yield 0xFE00  # Matching terminated due to cancel request
                return
    else:
        if _write(event, batch):
            yield 0x0000
        return
    if _write(event, batch):
        yield 0xFE00  # the cap: as Orthanc's LimitFindResults answers


def _write(event: Any, batch: list[bytes]) -> bool:
    """Send ``batch`` on the association's socket; False when the association is gone."""
    if not event.assoc.is_established:
        return False
    if batch:
        event.assoc.dul.socket.send(b"".join(batch))
    return True
