"""What C-FIND, C-MOVE and C-GET share: the identifier read and checked, the study's backend.

Every one of them reads its request's identifier (a few hundred bytes) with the same scan
as a C-STORE header, refuses one whose UID keys are not UIDs (0xA900), and goes to the
study's backend when the identifier names one bound study (Tier 1). What happens
otherwise is each service's own (``handlers.find``, ``handlers.retrieve``). No binding is
ever created by a query or a retrieve. Responses are relayed as the bytes the backend sent
(Message IDs are the modality's own, since requests go out unchanged).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from routing.dicom import commands, scan, status, tags, uids
from routing.relay.context import Context
from routing.relay.failures import FailureCodes, OperationFailed

logger = logging.getLogger("synthiq.routing")

# The keys an identifier is read for (all before (0020,000E), where the scan stops).
IDENTIFIER_TAGS = (tags.SOP_INSTANCE_UID, tags.QUERY_RETRIEVE_LEVEL, tags.PATIENT_ID, tags.STUDY_UID, tags.SERIES_UID)
# The UID keys of an identifier that routing reads, checked before anything is asked.
UID_KEYS = ((tags.STUDY_UID, "Study Instance UID", "study-uid"), (tags.SERIES_UID, "Series Instance UID", "series-uid"),
            (tags.SOP_INSTANCE_UID, "SOP Instance UID", "sop-instance-uid"))


@dataclass(frozen=True)
class Request:
    """A query or retrieve request, its identifier read."""

    context_id: int
    command: commands.Command
    data: bytes
    keys: dict[int, str]
    level: str
    study: str | None  # the one Study Instance UID it names, if it names exactly one
    codes: FailureCodes


# Where an unbound request goes: (the backends, the reason logged, the unhealthy ones not asked).
Targets = tuple[list[str], str, list[str]]
# The exchange with those backends: the final status.
Exchange = Callable[[Context, Request, list[str], list[str], str], Awaitable[int]]


def identifier_keys(data: bytes, transfer_syntax: str) -> dict[int, str]:
    """The routing keys of a query identifier (empty strings where absent)."""
    scanner = scan.HeaderScanner(transfer_syntax, wanted=IDENTIFIER_TAGS, stop=tags.SERIES_UID, require=None)
    header = scanner.feed(data, last=True)
    assert header is not None
    return dict(header.values)


def single_uid(value: str) -> str | None:
    """A Study Instance UID that names exactly one study (no list, no wildcard)."""
    if not value or "\\" in value or "*" in value or "?" in value:
        return None
    return value


def _invalid(data: bytes, transfer_syntax: str) -> tuple[dict[int, str], tuple[str, str] | None]:
    """The identifier's keys, and (the reason's label, the comment) if it is refused."""
    try:
        keys = identifier_keys(data, transfer_syntax)
    except scan.HeaderError as exc:
        return {}, ("identifier", f"unreadable: {exc}")
    return keys, next(((reason, uids.comment(name, problem)) for tag, name, reason in UID_KEYS
                       if (problem := uids.uid_key_problem(keys.get(tag, "")))), None)


async def read(ctx: Context, context_id: int, command: commands.Command, codes: FailureCodes) -> Request | None:
    """The request with its identifier; None when it was refused (and answered) here."""
    data = await ctx.peer.stream.read_data_set(context_id, ctx.network.network_timeout_seconds,
                                               limit=ctx.network.header_hold_bytes)
    keys, invalid = _invalid(data, ctx.transfer_syntax(context_id))
    if invalid is not None:
        reason, comment = invalid
        ctx.relay.telemetry.invalid_input(service=command.name, reason=reason)
        logger.error("%s pool=%s calling_ae=%s source_ip=%s: refused with 0xA900: %s", command.name, ctx.pool_id,
                     uids.shown(ctx.calling_ae), ctx.source_ip, comment)
        await ctx.answer(context_id, commands.response(command, status.IDENTIFIER_DOES_NOT_MATCH,
                                                       comment=comment[:commands.ERROR_COMMENT_MAX]))
        ctx.relay.telemetry.operation(service=command.name, status=status.IDENTIFIER_DOES_NOT_MATCH)
        return None
    return Request(context_id, command, data, keys, keys.get(tags.QUERY_RETRIEVE_LEVEL, "").upper(),
                   single_uid(keys.get(tags.STUDY_UID, "")), codes)


async def serve(ctx: Context, request: Request, unbound: Callable[[Context, Request], Awaitable[Targets]],
                exchange: Exchange) -> None:
    """Ask the study's backend, or those ``unbound`` names, through ``exchange``; answer
    SynthIQ's own failures; count, record and audit the outcome."""
    command, service, ops = request.command, request.command.name, ctx.operations
    targets: list[str] = []
    comment, by_backend = "", True
    try:
        bound = await ctx.relay.bound_backend(ctx.pool_id, request.study) if request.study else None
        targets, reason, unasked = ([bound], "affinity-hit", []) if bound is not None else await unbound(ctx, request)
        if not targets:
            raise OperationFailed(request.codes.unavailable, f"pool {ctx.pool_id}: no healthy backend")
        if ctx.peer.stream.has_input and await ops.from_modality(request.context_id, command, []):
            raise OperationFailed(status.CANCEL, "")  # cancelled before any backend was asked
        logger.info("%s pool=%s calling_ae=%s source_ip=%s level=%s study=%s backends=%s reason=%s",
                    service, ctx.pool_id, ctx.calling_ae, ctx.source_ip, request.level or "-", request.study or "-",
                    ",".join(targets), reason)
        code = await exchange(ctx, request, targets, unasked, reason)
    except OperationFailed as failure:
        log = logger.info if failure.status == status.CANCEL else logger.error
        log("%s pool=%s calling_ae=%s: answered 0x%04X %s", service, ctx.pool_id, ctx.calling_ae,
            failure.status, failure.comment)
        code, comment, by_backend = failure.status, failure.comment, False
        await ctx.answer(request.context_id, commands.response(command, failure.status, comment=failure.comment))
    ctx.relay.telemetry.operation(service=service, status=code)
    ops.record_failure(service, code, study=request.study or "", backends=targets, comment=comment,
                       by_backend=by_backend)
    ctx.relay.telemetry.audit.query_retrieve(ctx, command, request.data, request.keys, request.context_id, code,
                                             targets)
