"""C-FIND: to the bound study's backend, else to every healthy backend at once.

A query naming one bound Study Instance UID goes to the study's backend (Tier 1). A query
that names no study, or a study with no binding, goes to every healthy backend at once;
their pending responses are streamed to the modality as they come, a match that several
backends return is sent once, and one final response closes it for the whole pool. A
C-CANCEL is passed to every backend still answering.

SynthIQ's own statuses (PS3.4 C.4.1.1.4): 0xA700 (Refused: Out of Resources) when no
backend can be asked or one goes away, and as the final status of a fan-out that did not
hear from every backend that may hold matches (a partial answer is not a Success);
0xA900 an identifier whose UID keys are not UIDs (``handlers.query_retrieve``); 0xFE00
cancelled before any backend was asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from routing.dicom import commands, sop_classes, status, tags
from routing.dicom.pdu import ProtocolError
from routing.relay.connection import first_ready
from routing.relay.context import Context
from routing.relay.failures import FailureCodes, OperationFailed
from routing.relay.handlers import query_retrieve
from routing.relay.handlers.query_retrieve import Request, Targets
from routing.relay.outbound import BackendLink

logger = logging.getLogger("synthiq.routing")

CODES = FailureCodes(unavailable=status.FIND_OUT_OF_RESOURCES, lost=status.FIND_OUT_OF_RESOURCES)


async def handle(ctx: Context, context_id: int, command: commands.Command) -> None:
    request = await query_retrieve.read(ctx, context_id, command, CODES)
    if request is not None:
        await query_retrieve.serve(ctx, request, _everyone, _ask)


async def _everyone(ctx: Context, request: Request) -> Targets:
    placement = ctx.relay.placement
    return placement.healthy_backends(ctx.pool_id), "fan-out", placement.unhealthy_backends(ctx.pool_id)


async def _ask(ctx: Context, request: Request, targets: list[str], unasked: list[str], reason: str) -> int:
    if reason == "fan-out" and (len(targets) > 1 or unasked):
        return await _find_all(ctx, request, targets, unasked)
    return await ctx.operations.one(targets[0], request.context_id, request.command, request.data, CODES)


@dataclass
class _FanOut:
    """A C-FIND on several backends, as it goes."""

    key_tag: int  # the key that tells one match from another at the query's level
    failures: list[str]
    links: list[BackendLink] = field(default_factory=list)
    active: list[BackendLink] = field(default_factory=list)  # still answering
    seen: set[str] = field(default_factory=set)
    matches: int = 0
    cancelled: bool = False


async def _find_all(ctx: Context, request: Request, backend_ids: list[str], unasked: list[str]) -> int:
    """A C-FIND on every backend at once, matches merged (each sent once). Ends in
    0xA700 naming every backend that may hold matches and was not heard from (``unasked``
    are unhealthy), after the matches that did come: a partial answer is not a Success."""
    fan = _FanOut(sop_classes.LEVEL_KEYS.get(request.level, tags.STUDY_UID),
                  [f"backend {b} unhealthy, not asked" for b in unasked])
    for backend_id in backend_ids:
        try:
            link = await ctx.operations.link(backend_id, request.context_id, request.command, CODES)
        except OperationFailed as failure:
            fan.failures.append(failure.comment)
            continue
        link.claim()
        link.send_message(request.context_id, request.command.raw, [request.data])
        fan.links.append(link)
    fan.active = list(fan.links)
    try:
        await _gather(ctx, request, fan)
    finally:
        for link in fan.links:
            ctx.links.unclaim(link)
    if fan.cancelled:
        code, comment = status.CANCEL, ""
    elif fan.failures:
        code, comment = status.FIND_OUT_OF_RESOURCES, "; ".join(fan.failures)
    else:
        code, comment = status.SUCCESS, ""
    logger.info("C-FIND pool=%s calling_ae=%s merged %d match(es) from %d backend(s): 0x%04X %s", ctx.pool_id,
                ctx.calling_ae, fan.matches, len(fan.links), code, comment)
    await ctx.answer(request.context_id, commands.response(request.command, code, comment=comment))
    return code


async def _gather(ctx: Context, request: Request, fan: _FanOut) -> None:
    """Relay the backends' matches until each has given its final response (or gone away),
    passing on a C-CANCEL from the modality."""
    timeout = ctx.network.dimse_timeout_seconds
    while fan.active:
        try:
            await first_ready([link.conn for link in fan.active] + [ctx.peer.conn], timeout, "from the backends")
        except TimeoutError:
            for link in fan.active:
                fan.failures.append(f"backend {link.backend.id} timed out")
                link.abort()
            break
        for link in list(fan.active):
            if link.stream.has_input:
                await _reply(ctx, request, fan, link)
        if ctx.peer.stream.has_input:
            fan.cancelled |= await ctx.operations.from_modality(request.context_id, request.command, fan.active)


async def _reply(ctx: Context, request: Request, fan: _FanOut, link: BackendLink) -> None:
    """One response from ``link``: a new match relayed, a repeated one dropped, a final one
    ending that backend's part; a backend that breaks the protocol is aborted."""
    timeout = ctx.network.dimse_timeout_seconds
    try:
        reply_context, reply = await link.stream.read_command(timeout)
        identifier = (await link.stream.read_data_set(reply_context, timeout, limit=ctx.network.header_hold_bytes)
                      if reply.has_data_set else b"")
    except (ConnectionError, TimeoutError, ProtocolError) as exc:
        fan.failures.append(f"backend {link.backend.id} went away ({type(exc).__name__})")
        link.abort()
        fan.active.remove(link)
        return
    mismatch = None if reply.is_request else commands.response_mismatch(request.command, reply)
    if reply.is_request or mismatch:
        fan.failures.append(f"backend {link.backend.id} {mismatch or 'sent a request'}")
        logger.error("C-FIND pool=%s: backend %s %s: aborted", ctx.pool_id, link.backend.id,
                     mismatch or f"sent {reply.name} during a C-FIND")
        if mismatch:
            ctx.relay.telemetry.backend_violation(link.backend.id)
        link.abort()
        fan.active.remove(link)
        return
    if reply.status in status.PENDING and identifier:
        key = query_retrieve.identifier_keys(identifier, ctx.transfer_syntax(reply_context)).get(fan.key_tag, "")
        if key and key in fan.seen:
            return  # the same study (series, instance) from another backend
        fan.seen.add(key)
        fan.matches += 1
        await ctx.peer.answer(reply_context, reply.raw, [identifier])
    elif reply.status not in status.PENDING:
        fan.active.remove(link)
        if reply.status not in (status.SUCCESS, status.CANCEL):
            fan.failures.append(f"backend {link.backend.id} answered 0x{reply.status or 0:04X}")
