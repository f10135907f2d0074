"""C-STORE: held until the Study Instance UID is read, routed, then relayed cut-through.

The command and the first data set fragments are held (up to ``Network.HeaderHoldBytes``)
until the Study Instance UID has been read; the study is routed (a hot cache hit inline,
anything else on the router's batching thread, so the loop never waits on the database);
the command and the held fragments go to the backend's association, and every further
fragment is passed on as it arrives, re-framed to the backend's max PDU when it is smaller
than the modality's PDUs. The backend's C-STORE-RSP goes back as the bytes it sent.

Never a false success: the modality gets the backend's status only; anything that goes
wrong on the way is answered, after the rest of the instance has been read and dropped,
with SynthIQ's own failure status and a comment naming the backend. If the modality
aborts mid-instance, the backend's association is aborted too, so the backend never
completes a partial instance.

SynthIQ's own statuses for a C-STORE (PS3.4 B.2.3; defined in ``routing.dicom.status``):
0xC000 the header cannot be read, or its Study or SOP Instance UID is not a UID; 0xC001
the Study Instance UID is not within the bytes held; 0xA700 no enabled backend in the
pool; 0xA701 the study's backend cannot be reached (after the hold) or rejects the
association; 0xA702 it aborts, resets or times out mid-instance (or answers another
request); 0x0122 it does not take the SOP class or transfer syntax.
"""

from __future__ import annotations

import asyncio
import logging
import time

from routing.dicom import commands, status, uids
from routing.dicom.association import PeerAborted
from routing.dicom.pdu import ProtocolError
from routing.dicom.scan import Header, HeaderError, HeaderScanner
from routing.relay.connection import ConnectionClosed, TimedOut
from routing.relay.context import Context
from routing.relay.failures import LinkLost, OperationFailed, Violation
from routing.relay.outbound import BackendLink, OutboundUnavailable
from routing.relay.peer import relay_message
from routing.waterfall import ASSOCIATION_CACHED

logger = logging.getLogger("synthiq.routing")

HOLD_RETRY_SECONDS = 0.5  # how often a held association tries its backend again


def _logged_uid(value: str) -> str:
    """A UID for a log line: as it is when valid, escaped and cut when not, "-" when absent."""
    if not value:
        return "-"
    return value if uids.uid_problem(value) is None else uids.shown(value)


async def handle(ctx: Context, context_id: int, command: commands.Command) -> None:
    started = time.perf_counter()
    bytes_before = ctx.tally.bytes_relayed
    ctx.tally.rx += 1
    sop_uid = command.sop_instance_uid
    study_uid = ""
    try:
        held, last, header = await _hold_until_study_uid(ctx, context_id, sop_uid)
        study_uid = header.study_uid
        _check_uids(ctx, header, sop_uid, held, last)
        try:
            backend_id = await _route(ctx, header, sop_uid)
            link = await _link(ctx, backend_id, context_id)
        except OperationFailed:
            if not last:  # answer only once the whole request has been read
                await ctx.drop_data_set(context_id)
            raise
        code, answer = await _forward(ctx, link, context_id, command, held, last)
    except OperationFailed as failure:
        await _refuse(ctx, context_id, command, failure, study_uid)
        return
    ctx.relay.telemetry.forwarded(backend_id, code, time.perf_counter() - started,
                                  nbytes=ctx.tally.bytes_relayed - bytes_before)
    await _answer(ctx, context_id, command, backend_id, header, code, answer)


async def _refuse(ctx: Context, context_id: int, command: commands.Command, failure: OperationFailed,
                  study_uid: str) -> None:
    """SynthIQ's own answer, once the whole request has been read."""
    sop_uid = command.sop_instance_uid
    ctx.tally.failed += 1
    # The verdict, with every id an operator searches by (the lines above say why).
    logger.error("C-STORE failed pool=%s calling_ae=%s source_ip=%s study=%s sop=%s backend=%s: 0x%04X %s",
                 ctx.pool_id, ctx.calling_ae, ctx.source_ip, _logged_uid(study_uid),
                 _logged_uid(sop_uid), failure.backend or "-", failure.status, failure.comment)
    ctx.relay.telemetry.forward_failed(failure.backend, failure.status)
    ctx.relay.telemetry.store_failed(
        pool_id=ctx.pool_id, calling_ae=ctx.calling_ae, source_ip=ctx.source_ip,
        study_uid=study_uid, sop_instance_uid=sop_uid,
        backend_id=failure.backend, status=failure.status, comment=failure.comment, by_backend=False)
    if failure.drop:  # answer only once the whole request has been read
        await ctx.drop_data_set(context_id)
    offending = failure.offending or (
        [0x0020000D] if failure.status in (status.CANNOT_UNDERSTAND, status.UID_BEYOND_HOLD) else None)
    await ctx.answer(context_id, commands.response(command, failure.status, comment=failure.comment,
                                                   offending=offending))


async def _answer(ctx: Context, context_id: int, command: commands.Command, backend_id: str, header: Header,
                  code: int, answer: commands.Command) -> None:
    """The backend's C-STORE-RSP to the modality, as the bytes it sent; recorded."""
    sop_uid = command.sop_instance_uid
    if status.is_success(code):
        ctx.tally.fwd += 1
        ctx.relay.placement.note_instance(pool_id=ctx.pool_id, sop_instance_uid=sop_uid,
                                          backend_id=backend_id, study_uid=header.study_uid)
    else:
        ctx.tally.failed += 1
        logger.warning("C-STORE not stored pool=%s calling_ae=%s source_ip=%s study=%s sop=%s backend=%s: backend "
                       "answered 0x%04X %s", ctx.pool_id, ctx.calling_ae, ctx.source_ip,
                       header.study_uid, sop_uid, backend_id, code, answer.text(commands.ERROR_COMMENT))
        ctx.relay.telemetry.store_failed(
            pool_id=ctx.pool_id, calling_ae=ctx.calling_ae, source_ip=ctx.source_ip,
            study_uid=header.study_uid, sop_instance_uid=sop_uid, backend_id=backend_id, status=code,
            comment=answer.text(commands.ERROR_COMMENT), by_backend=True)
    ctx.relay.telemetry.audit.stored(ctx, header, command.sop_class_uid, backend_id, code)
    await ctx.answer(context_id, answer.raw)


def _check_uids(ctx: Context, header: Header, sop_uid: str, held: list[memoryview], last: bool) -> None:
    """The UIDs this C-STORE is routed and recorded by must be UIDs: anything else is
    refused with 0xC000 before a byte reaches a backend, the database or the journal.
    Raises OperationFailed (with the rest of the data set still to be dropped if not ``last``)."""
    for name, reason, tag, value in (("Study Instance UID", "study-uid", 0x0020000D, header.study_uid),
                                     ("SOP Instance UID", "sop-instance-uid", commands.AFFECTED_SOP_INSTANCE_UID,
                                      sop_uid)):
        problem = uids.uid_problem(value)
        if problem is None:
            continue
        held.clear()
        ctx.relay.telemetry.invalid_input(service="C-STORE", reason=reason)
        logger.error("pool=%s calling_ae=%s source_ip=%s sop=%s: C-STORE refused with 0xC000: %s %s is %s",
                     ctx.pool_id, uids.shown(ctx.calling_ae), ctx.source_ip, uids.shown(sop_uid), name,
                     uids.shown(value), problem)
        raise OperationFailed(status.CANNOT_UNDERSTAND, uids.comment(name, problem), offending=[tag], drop=not last)


async def _hold_until_study_uid(ctx: Context, context_id: int, sop_uid: str) -> tuple[list[memoryview], bool, Header]:
    """Read data set fragments until the Study Instance UID is known; they are held
    (bounded by ``hold_bytes``) to be sent once the study is routed."""
    scanner = HeaderScanner(ctx.transfer_syntax(context_id))
    held: list[memoryview] = []
    size = 0
    while True:
        piece = await ctx.peer.stream.next_piece(context_id, ctx.network.network_timeout_seconds)
        held.append(piece.data)
        size += len(piece.data)
        try:
            header = scanner.feed(piece.data, last=piece.last)
        except HeaderError as exc:
            code, comment = status.CANNOT_UNDERSTAND, str(exc)
        else:
            if header is not None:
                return held, piece.last, header
            if size < ctx.network.header_hold_bytes:
                continue
            code, comment = (status.UID_BEYOND_HOLD,
                             f"Study Instance UID not in the first {ctx.network.header_hold_bytes // 1024} KiB")
        held.clear()
        if not piece.last:
            await ctx.drop_data_set(context_id)
        logger.error("pool=%s calling_ae=%s source_ip=%s sop=%s: C-STORE refused with 0x%04X: %s",
                     ctx.pool_id, ctx.calling_ae, ctx.source_ip, uids.shown(sop_uid), code, comment)
        raise OperationFailed(code, comment)


async def _route(ctx: Context, header: Header, sop_uid: str) -> str:
    suid = header.study_uid
    backend_id = ctx.tally.studies.get(suid)
    if backend_id is not None:
        ctx.tally.cache_hits += 1
        ctx.relay.telemetry.routed(ASSOCIATION_CACHED)
    else:
        route = await ctx.relay.route(ctx.pool_id, suid)
        if route.backend_id is None:
            logger.error("pool=%s calling_ae=%s source_ip=%s study=%s sop=%s: no enabled backend can take it",
                         ctx.pool_id, ctx.calling_ae, ctx.source_ip, suid, sop_uid)
            raise OperationFailed(status.OUT_OF_RESOURCES, f"pool {ctx.pool_id}: no backend available")
        backend_id = route.backend_id
        ctx.tally.studies[suid] = backend_id
        if route.cache_hit:
            ctx.tally.cache_hits += 1
        ctx.relay.telemetry.decided(pool_id=ctx.pool_id, study_uid=suid, backend_id=backend_id,
                                    reason=route.reason, calling_ae=ctx.calling_ae, source_ip=ctx.source_ip,
                                    modality=header.modality)
        patient = f" patient_id={header.patient_id}" if ctx.relay.log_patient_id else ""
        logger.info(
            "route pool=%s calling_ae=%s source_ip=%s study=%s sop=%s modality=%s%s backend=%s reason=%s",
            ctx.pool_id, ctx.calling_ae, ctx.source_ip, suid, sop_uid, header.modality, patient,
            backend_id, route.reason,
        )
    ctx.relay.placement.touch(ctx.pool_id, suid)
    return backend_id


async def _hold_for(ctx: Context, backend_id: str, first: OutboundUnavailable) -> BackendLink:
    """The study's backend cannot be reached: retry it for up to
    Network.BoundBackendHoldSeconds before failing the C-STORE. Meanwhile nothing more
    is read from the modality (its socket fills, TCP holds it back), so holding costs
    no memory; the number of associations held per pool is bounded."""
    loop = asyncio.get_running_loop()
    network, relay = ctx.network, ctx.relay
    deadline = loop.time() + network.bound_backend_hold_seconds
    if network.bound_backend_hold_seconds <= 0 or relay.held[ctx.pool_id] >= network.max_held_associations:
        raise OperationFailed(first.status, first.comment, backend_id) from None
    relay.held[ctx.pool_id] += 1
    relay.telemetry.held()
    logger.warning("pool=%s calling_ae=%s source_ip=%s: %s; holding the association up to %.0fs for it",
                   ctx.pool_id, ctx.calling_ae, ctx.source_ip, first.comment,
                   network.bound_backend_hold_seconds)
    last = first
    try:
        while loop.time() < deadline:
            await asyncio.sleep(min(HOLD_RETRY_SECONDS, max(0.0, deadline - loop.time())))
            try:
                link = await ctx.links.to(backend_id, log=False)
            except OutboundUnavailable as exc:
                last = exc
                continue
            logger.info("pool=%s calling_ae=%s: backend %s reachable again after %.1fs; relaying",
                        ctx.pool_id, ctx.calling_ae, backend_id,
                        network.bound_backend_hold_seconds - (deadline - loop.time()))
            return link
    finally:
        relay.held[ctx.pool_id] -= 1
    logger.error("pool=%s calling_ae=%s source_ip=%s backend=%s: still unreachable after %.0fs held: %s; the "
                 "C-STORE fails with 0x%04X", ctx.pool_id, ctx.calling_ae, ctx.source_ip, backend_id,
                 network.bound_backend_hold_seconds, last.comment, last.status)
    raise OperationFailed(last.status, last.comment, backend_id)


async def _link(ctx: Context, backend_id: str, context_id: int) -> BackendLink:
    """The study's link (``Links.to``), riding out a short backend outage. Raises OperationFailed."""
    try:
        link = await ctx.links.to(backend_id)
    except OutboundUnavailable as exc:
        link = await _hold_for(ctx, backend_id, exc)
    if context_id not in link.accepted.contexts:
        comment = f"backend {backend_id} refused SOP class/syntax"
        logger.error("pool=%s calling_ae=%s: %s (%s in %s)", ctx.pool_id, ctx.calling_ae, comment,
                     ctx.contexts[context_id].abstract_syntax, ctx.transfer_syntax(context_id))
        raise OperationFailed(status.SOP_CLASS_NOT_SUPPORTED, comment, backend_id)
    return link


async def _forward(ctx: Context, link: BackendLink, context_id: int, command: commands.Command,
                   held: list[memoryview], last: bool) -> tuple[int, commands.Command]:
    backend_id = link.backend.id
    ctx.relay.placement.note_sent(backend_id)
    link.claim()
    try:
        try:
            ctx.tally.bytes_relayed += await relay_message(
                ctx.peer.stream, link, context_id, command.raw, held, last=last,
                timeout=ctx.network.network_timeout_seconds, drain_timeout=ctx.network.dimse_timeout_seconds)
            return await _response(ctx, link, command)
        except LinkLost as exc:
            link.abort()
            ctx.links.drop(link)
            logger.error("pool=%s calling_ae=%s sop=%s backend=%s: %s", ctx.pool_id, uids.shown(ctx.calling_ae),
                         command.sop_instance_uid, backend_id, exc)
            if ctx.peer.stream.data_set_unread:
                await ctx.drop_data_set(context_id)
            if isinstance(exc, Violation):
                ctx.relay.telemetry.backend_violation(backend_id)
                raise OperationFailed(status.BACKEND_NO_RESPONSE, str(exc), backend_id) from None
            raise OperationFailed(status.BACKEND_NO_RESPONSE, f"backend {backend_id} aborted/timed out",
                                  backend_id) from None
    except (PeerAborted, ConnectionClosed, ProtocolError, TimedOut):
        # The modality went away (or broke the protocol) mid-instance: the backend must
        # never complete a partial instance.
        link.abort()
        ctx.links.drop(link)
        raise
    finally:
        ctx.links.unclaim(link)


async def _response(ctx: Context, link: BackendLink, command: commands.Command) -> tuple[int, commands.Command]:
    """The backend's C-STORE-RSP for ``command``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.network.dimse_timeout_seconds
    while True:
        try:
            rsp_context, rsp = await link.stream.read_command(max(0.0, deadline - loop.time()))
        except (PeerAborted, ConnectionClosed, TimedOut, ProtocolError) as exc:
            raise LinkLost(f"no C-STORE response ({type(exc).__name__}: {exc})") from None
        if rsp.field == commands.C_STORE_RSP:
            mismatch = commands.response_mismatch(command, rsp)
            if mismatch:
                raise Violation(f"backend {link.backend.id} {mismatch}")
            code = rsp.status
            if code is None:
                raise LinkLost("C-STORE response without a Status")
            if rsp.has_data_set:
                await link.stream.skip_data_set(rsp_context, ctx.network.dimse_timeout_seconds)
            return code, rsp
        logger.warning("backend %s sent %s while a C-STORE was in flight: ignored", link.backend.id, rsp.name)
        if rsp.has_data_set:
            await link.stream.skip_data_set(rsp_context, ctx.network.dimse_timeout_seconds)

