"""Storage commitment (Push Model) through the pool, whether or not SynthIQ relayed the
instances, and commitment reports that arrive at SynthIQ from outside.

**N-ACTION from a requester.** The referenced instances are located: where SynthIQ sent
them first, then an IMAGE-level C-FIND to the healthy backends (``routing.relay.locator``).

- All held by one backend: the N-ACTION goes to it unchanged and its answer comes back
  verbatim; it reports the way it is set up (on this association while it is open, to the
  requester directly, or to SynthIQ, which passes the report on: see below).
- Spread over several backends, or some held by none: SynthIQ answers the N-ACTION itself
  and sends each backend its share under the same Transaction UID, calling as the
  requester (so each backend reports to the requester's AE title, which its configuration
  points at the pool's listener). It gathers their reports for up to GATHER_SECONDS and
  sends exactly one report (PS3.4 J.3.3.1.2 puts every instance in one; a requester may
  take the first as the whole answer): instances no backend holds are failed with 0x0112,
  a share never reported with 0x0110.

SynthIQ's own report goes on a new association to the requester's address
(``Pools[].CommitmentRequesters``), calling as the AE title the requester called and
proposing the SCP role; on the requester's own association only when it has no address
and that association is still open.

**N-EVENT-REPORT arriving at SynthIQ.** A backend's report for a transaction SynthIQ
passed on (found by Transaction UID in the shared store: it may reach any process): taken
into the merged report, or passed on to the requester. Otherwise it is an archive's report
to a backend that asked it directly: the backend whose own AE title was called, else the
one holding the referenced instances, gets it relayed as sent (the archive's calling AE
title kept), and the archive gets the backend's answer verbatim.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from routing.dicom import commands, scan, scu, sop_classes, status, uids
from routing.relay.failures import FailureCodes
from routing.relay.outbound import BackendAddress

if TYPE_CHECKING:
    from routing.relay.operations import Operations

logger = logging.getLogger("synthiq.routing")

EVENT_ALL_COMMITTED, EVENT_FAILURES_EXIST = 1, 2
# How long SynthIQ waits for the backends' reports of a merged transaction (archives
# answer in seconds; a share unreported by then is failed with 0x0110, never assumed).
GATHER_SECONDS = 60.0
GATHER_POLL_SECONDS = 0.25
# A backend may report a share on SynthIQ's own association right after its N-ACTION-RSP.
SAME_ASSOCIATION_WAIT_SECONDS = 1.0
ANSWER_SETTLE_SECONDS = 0.2

Reference = tuple[str, str]  # (SOP Class UID, SOP Instance UID)
Failure = tuple[str, str, int]  # ... and its Failure Reason


@dataclass(frozen=True)
class Transaction:
    transaction_uid: str
    pool_id: str
    requester_ae: str
    called_ae: str
    merged: bool


@dataclass(frozen=True)
class Report:
    backend: str
    committed: list[Reference]
    failed: list[Failure]


class CommitmentStore(Protocol):
    """Transactions SynthIQ passed on and the reports gathered for them, shared by every
    runproxy process (``routing.commitments``). Blocking: called on executor threads."""

    def open(self, transaction: Transaction) -> None: ...
    def get(self, transaction_uid: str) -> Transaction | None: ...
    def add_report(self, transaction_uid: str, report: Report) -> None: ...
    def reports(self, transaction_uid: str) -> list[Report]: ...
    def close(self, transaction_uid: str) -> None: ...


class Unreadable(ValueError):
    """The action or event information cannot be used: (status, comment)."""

    def __init__(self, code: int, comment: str):
        super().__init__(comment)
        self.status, self.comment = code, comment


@dataclass(frozen=True)
class Information:
    """What an N-ACTION or N-EVENT-REPORT data set says, validated."""

    transaction_uid: str
    references: list[Reference]
    failed: list[Failure]


def read_information(data: bytes, transfer_syntax: str) -> Information:
    """The Transaction UID and the instances of a commitment data set; raises Unreadable
    (0x0110 unreadable, 0x0115 an invalid UID) rather than trust anything in it."""
    implicit, little, _ = scan.encoding(transfer_syntax)
    try:
        ds = read_dataset(io.BytesIO(data), implicit, little)
        transaction = str(ds.TransactionUID)
        references = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                      for i in ds.get("ReferencedSOPSequence", [])]
        failed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.get("FailureReason", 0x0110)))
                  for i in ds.get("FailedSOPSequence", [])]
    except Exception as exc:  # pydicom raises many types on a malformed data set
        raise Unreadable(status.PROCESSING_FAILURE, f"unreadable commitment information: {exc}") from None
    named = [("Transaction UID", transaction)] + [
        (f"Referenced SOP {kind} UID", uid) for item in [*references, *failed]
        for kind, uid in (("Class", str(item[0])), ("Instance", str(item[1])))]
    problem = next(((name, p) for name, value in named if (p := uids.uid_problem(value))), None)
    if problem is not None:
        raise Unreadable(status.INVALID_ARGUMENT_VALUE, uids.comment(*problem))
    return Information(transaction, references, failed)


def _items(references: list[Reference]) -> list[Dataset]:
    out = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        out.append(item)
    return out


def event_information(transaction_uid: str, committed: list[Reference], failed: list[Failure]) -> Dataset:
    """A storage commitment result: committed instances, failed ones with their reasons."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if committed:
        ds.ReferencedSOPSequence = _items(committed)
    if failed:
        items = _items([(c, i) for c, i, _ in failed])
        for item, (_, _, reason) in zip(items, failed, strict=True):
            item.FailureReason = reason
        ds.FailedSOPSequence = items
    return ds


def merge(references: list[Reference], reports: list[Report], unheld: set[str],
          unreported_reason: int = status.PROCESSING_FAILURE) -> tuple[list[Reference], list[Failure]]:
    """One result for the requested ``references`` from the backends' reports: an instance
    any backend committed is committed; one no backend holds failed 0x0112; one a backend
    failed keeps its reason; one nobody reported on fails with ``unreported_reason``.
    Instances a report names that were not requested are ignored."""
    committed_uids = {uid for r in reports for _, uid in r.committed}
    reasons = {uid: reason for r in reports for _, uid, reason in r.failed}
    committed: list[Reference] = []
    failed: list[Failure] = []
    for sop_class, uid in references:
        if uid in committed_uids:
            committed.append((sop_class, uid))
        elif uid in unheld:
            failed.append((sop_class, uid, status.NO_SUCH_OBJECT_INSTANCE))
        else:
            failed.append((sop_class, uid, reasons.get(uid, unreported_reason)))
    return committed, failed


def send_share(backend: BackendAddress, *, requester_ae: str, transaction_uid: str, share: list[Reference],
               timeout: float) -> tuple[int, list[tuple[bytes, str]]]:
    """A backend's share of a transaction as its own N-ACTION, calling as the requester; (its
    status, any report it made on this association meanwhile: (event information, transfer
    syntax)). Proposes both roles, so that the backend may report here. Raises OSError."""
    action = Dataset()
    action.TransactionUID = transaction_uid
    action.ReferencedSOPSequence = _items(share)
    model = sop_classes.STORAGE_COMMITMENT_PUSH
    with scu.associate(backend, calling_ae=requester_ae, contexts=[(model, scu.DATA_SET_SYNTAXES)], timeout=timeout,
                       roles=((model, True, True),)) as link:
        context_id = link.context_id(model)
        code, reported = scu.n_action(link, context_id, sop_instance=sop_classes.STORAGE_COMMITMENT_INSTANCE,
                                      action_type=1, information=action)
        if status.is_success(code) and not reported:
            # A backend may report on this association right after its N-ACTION-RSP: it is
            # released only once a report made here has been answered, or none came in time.
            report = scu.await_report(link, within=SAME_ASSOCIATION_WAIT_SECONDS)
            if report is not None:
                reported.append(report)
        if reported and link.open:
            # Not released on the heels of our answer: a peer still reading it would take the
            # release for "no answer" (pynetdicom does) and report again elsewhere.
            time.sleep(ANSWER_SETTLE_SECONDS)
        return code, [(data, link.contexts[context_id][1]) for data in reported]


def event_report(peer: BackendAddress, *, calling_ae: str, event_type: int, information: Dataset,
                 timeout: float) -> int:
    """Send one storage commitment N-EVENT-REPORT on a new association, proposing the SCP
    role for this side (the reporting one: PS3.4 J.3.3.1.2); the peer's status. Raises OSError,
    also when the peer does not take this side as the SCP."""
    model = sop_classes.STORAGE_COMMITMENT_PUSH
    with scu.associate(peer, calling_ae=calling_ae, contexts=[(model, scu.DATA_SET_SYNTAXES)], timeout=timeout,
                       roles=((model, False, True),)) as link:
        if model not in link.scp_classes:
            raise scu.Unreachable("did not accept SynthIQ as the SCP of storage commitment (role selection)")
        return scu.event_report(link, link.context_id(model), sop_instance=sop_classes.STORAGE_COMMITMENT_INSTANCE,
                                event_type=event_type, information=information)


class Commitments:
    """Storage commitment on one inbound association (see the module docstring)."""

    def __init__(self, operations: Operations):
        self.ops = operations
        self.ctx = operations.ctx
        self._next_own_id = 0xFF00

    # -- N-ACTION from a requester ------------------------------------------------------------
    async def action(self, context_id: int, command: commands.Command, codes: FailureCodes) -> None:
        ctx, relay = self.ctx, self.ctx.relay
        ts = ctx.transfer_syntax(context_id)
        if (read := await self._read(context_id, command, ts)) is None:
            return
        data, info = read
        references = info.references
        sops = [uid for _, uid in references]
        where = await relay.instance_backends(ctx.pool_id, sops)
        unknown = [uid for uid in sops if uid not in where]
        located = 0
        if unknown:
            found = await relay.locate_instances(ctx.pool_id, calling_ae=ctx.calling_ae, sop_uids=unknown)
            located = len(found)
            where.update(found)
        shares: dict[str, list[Reference]] = defaultdict(list)
        for ref in references:
            if ref[1] in where:
                shares[where[ref[1]]].append(ref)
        unheld = {uid for uid in sops if uid not in where}
        logger.info("N-ACTION storage commitment pool=%s calling_ae=%s source_ip=%s transaction=%s instances=%d "
                    "located=%d held-by-none=%d backends=%s", ctx.pool_id, ctx.calling_ae, ctx.source_ip,
                    info.transaction_uid, len(references), located, len(unheld),
                    ",".join(f"{b}:{len(s)}" for b, s in sorted(shares.items())) or "-")
        transaction = Transaction(info.transaction_uid, ctx.pool_id, ctx.calling_ae, ctx.called_ae,
                                  merged=len(shares) != 1 or bool(unheld))
        await self._store("open", transaction)
        if not transaction.merged:
            code = await self.ops.forward(next(iter(shares)), context_id, command, data, codes)
            if status.is_success(code):
                self.ops.reports_awaited += 1
            relay.telemetry.operation(service=command.name, status=code)
            self.ops.record_failure(command.name, code, backends=list(shares), by_backend=True)
            return
        await ctx.answer(context_id, commands.response(command, status.SUCCESS))
        relay.telemetry.operation(service=command.name, status=status.SUCCESS)
        self.ops.reports_awaited += 1
        relay.spawn(self._gather(context_id, transaction, references, dict(shares), unheld, ts))

    async def _read(self, context_id: int, command: commands.Command, ts: str) -> tuple[bytes, Information] | None:
        """The request's data set, as read and validated; None when it was answered with a failure."""
        ctx = self.ctx
        data = await ctx.peer.stream.read_data_set(context_id, ctx.network.network_timeout_seconds,
                                                   limit=ctx.network.header_hold_bytes)
        try:
            return data, read_information(data, ts)
        except Unreadable as exc:
            if exc.status == status.INVALID_ARGUMENT_VALUE:
                ctx.relay.telemetry.invalid_input(service=command.name, reason="referenced-uid")
            logger.error("%s pool=%s calling_ae=%s source_ip=%s: refused with 0x%04X: %s", command.name,
                         ctx.pool_id, uids.shown(ctx.calling_ae), ctx.source_ip, exc.status, exc.comment)
            await ctx.answer(context_id, commands.response(command, exc.status, comment=exc.comment))
            ctx.relay.telemetry.operation(service=command.name, status=exc.status)
            self.ops.record_failure(command.name, exc.status, comment=exc.comment, by_backend=False)
            return None

    async def _store(self, method: str, *args: object) -> object:
        """A call to the shared store on an executor thread; a database that cannot be
        reached costs the cross-process part (logged), never the operation."""
        store = self.ctx.relay.commitments
        if store is None:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(None, lambda: getattr(store, method)(*args))
        except Exception as exc:  # the database is away: the reports still work on this process
            logger.warning("storage commitment store: %s failed: %s", method, exc)
            return None

    async def _gather(self, context_id: int, transaction: Transaction, references: list[Reference],
                      shares: dict[str, list[Reference]], unheld: set[str], ts: str) -> None:
        """Send the shares, gather the reports, send the one merged report."""
        ctx, relay, loop = self.ctx, self.ctx.relay, asyncio.get_running_loop()
        uid = transaction.transaction_uid
        reports: list[Report] = []
        refused: list[Report] = []
        try:
            timeout = ctx.network.acse_timeout_seconds

            async def send(backend_id: str, share: list[Reference]) -> None:
                backend = relay.placement.address(backend_id)
                try:
                    code, same = await loop.run_in_executor(None, lambda: send_share(
                        backend, requester_ae=transaction.requester_ae, transaction_uid=uid, share=share,
                        timeout=timeout))
                except (OSError, RuntimeError, ValueError) as exc:
                    code, same = status.PROCESSING_FAILURE, []
                    logger.error("storage commitment transaction=%s: backend %s could not be asked for its %d "
                                 "instance(s): %s", uid, backend_id, len(share), exc)
                if not status.is_success(code):
                    refused.append(Report(backend_id, [], [(c, i, status.PROCESSING_FAILURE) for c, i in share]))
                    logger.error("storage commitment transaction=%s: backend %s answered the N-ACTION with 0x%04X",
                                 uid, backend_id, code)
                for data, syntax in same:
                    try:
                        info = read_information(data, syntax)
                    except Unreadable as exc:
                        logger.error("storage commitment transaction=%s: backend %s reported nonsense: %s", uid,
                                     backend_id, exc.comment)
                        continue
                    reports.append(Report(backend_id, info.references, info.failed))

            await asyncio.gather(*(send(b, share) for b, share in shares.items()))
            wanted = {i for share in shares.values() for _, i in share} - {i for r in refused for _, i, _ in r.failed}
            deadline = loop.time() + GATHER_SECONDS
            while True:
                stored = await self._store("reports", uid) or []
                assert isinstance(stored, list)
                answered = {i for r in [*reports, *stored] for i in [*(u for _, u in r.committed),
                                                                     *(u for _, u, _ in r.failed)]}
                if wanted <= answered or loop.time() > deadline:
                    break
                await asyncio.sleep(GATHER_POLL_SECONDS)
            committed, failed = merge(references, [*reports, *stored, *refused], unheld)
            await self._report(context_id, transaction, committed, failed, ts)
        except Exception:  # a bug must cost this report (logged), never the worker
            logger.exception("storage commitment transaction=%s: the merged report failed", uid)
        finally:
            await self._store("close", uid)
            self.ops.reports_awaited = max(0, self.ops.reports_awaited - 1)

    async def _report(self, context_id: int, transaction: Transaction, committed: list[Reference],
                      failed: list[Failure], ts: str) -> None:
        """SynthIQ's own report to the requester: to its address, else on its association."""
        ctx = self.ctx
        info = event_information(transaction.transaction_uid, committed, failed)
        event_type = EVENT_FAILURES_EXIST if failed else EVENT_ALL_COMMITTED
        where = f"{len(committed)} committed, {len(failed)} failed"
        code = await self.deliver(transaction, event_type, info)
        if code is not None:
            log = logger.info if status.is_success(code) else logger.error
            log("storage commitment transaction=%s: report (%s) to %s answered 0x%04X", transaction.transaction_uid,
                where, transaction.requester_ae, code)
            return
        if ctx.peer.conn.is_open:
            await self._report_here(context_id, event_type, info, ts)
            logger.info("storage commitment transaction=%s: report (%s) sent on %s's association",
                        transaction.transaction_uid, where, transaction.requester_ae)
            return
        logger.error("storage commitment transaction=%s: the report (%s) is lost: %s has no address in "
                     "Pools[%s].CommitmentRequesters and its association has closed", transaction.transaction_uid,
                     where, transaction.requester_ae, transaction.pool_id)

    async def deliver(self, transaction: Transaction, event_type: int, info: Dataset) -> int | None:
        """Send a report to the requester's configured address on a new association, calling
        as the AE title it called; its status (0x0110 if it could not be reached), or None
        when it has no address."""
        address = self.ctx.listener.requester(transaction.requester_ae)
        if address is None:
            return None
        peer = BackendAddress(transaction.requester_ae, transaction.requester_ae, *address)
        try:
            code: int = await asyncio.get_running_loop().run_in_executor(None, lambda: event_report(
                peer, calling_ae=transaction.called_ae, event_type=event_type, information=info,
                timeout=self.ctx.network.acse_timeout_seconds))
            return code
        except (OSError, RuntimeError, ValueError) as exc:
            logger.error("storage commitment transaction=%s: requester %s at %s:%d could not be reached: %s",
                         transaction.transaction_uid, transaction.requester_ae, address[0], address[1], exc)
            return status.PROCESSING_FAILURE

    async def _report_here(self, context_id: int, event_type: int, info: Dataset, ts: str) -> None:
        """SynthIQ's N-EVENT-REPORT on the requester's own association (its answer dropped)."""
        ctx = self.ctx
        message_id = self._next_own_id = (self._next_own_id + 1) & 0xFFFF or 1
        self.ops.own.add(message_id)
        request = commands.event_report(message_id=message_id, sop_class_uid=sop_classes.STORAGE_COMMITMENT_PUSH,
                                        sop_instance_uid=sop_classes.STORAGE_COMMITMENT_INSTANCE, event_type=event_type)
        await ctx.peer.answer(context_id, request, [_encode(info, ts)])

    # -- N-EVENT-REPORT arriving at SynthIQ ----------------------------------------------------
    async def event_report(self, context_id: int, command: commands.Command, codes: FailureCodes) -> None:
        ctx, relay = self.ctx, self.ctx.relay
        if (read := await self._read(context_id, command, ctx.transfer_syntax(context_id))) is None:
            return
        data, info = read
        uid = info.transaction_uid
        found = await self._store("get", uid)
        transaction = found if isinstance(found, Transaction) and found.pool_id == ctx.pool_id else None
        reporter = ctx.listener.backend_called(ctx.calling_ae) or ctx.calling_ae
        code: int | None
        if transaction is not None and transaction.merged:
            await self._store("add_report", uid, Report(reporter, info.references, info.failed))
            code, comment, to = status.SUCCESS, "", "the merged report"
        elif transaction is not None:
            event_type = command.us(commands.EVENT_TYPE_ID) or EVENT_FAILURES_EXIST
            code = await self.deliver(transaction, event_type, event_information(uid, info.references, info.failed))
            to = transaction.requester_ae
            comment = "" if code is not None else (f"no address for {transaction.requester_ae} in "
                                                   f"Pools[{ctx.pool_id}].CommitmentRequesters")
            code = status.PROCESSING_FAILURE if code is None else code
            if status.is_success(code):
                await self._store("close", uid)
        else:
            backend_id = ctx.called_backend or await self._holder(info)
            if backend_id is None:
                code, to = status.PROCESSING_FAILURE, "-"
                comment = (f"no backend of pool {ctx.pool_id} holds the instances, and called AE title "
                           f"{ctx.called_ae!r} is no backend's")
            else:
                logger.info("N-EVENT-REPORT storage commitment pool=%s calling_ae=%s source_ip=%s transaction=%s "
                            "instances=%d failed=%d: relayed to backend %s", ctx.pool_id, ctx.calling_ae,
                            ctx.source_ip, uid, len(info.references), len(info.failed), backend_id)
                code = await self.ops.forward(backend_id, context_id, command, data, codes)
                relay.telemetry.operation(service=command.name, status=code)
                self.ops.record_failure(command.name, code, backends=[backend_id], by_backend=True)
                return
        log = logger.info if status.is_success(code) else logger.error
        log("N-EVENT-REPORT storage commitment pool=%s calling_ae=%s source_ip=%s transaction=%s instances=%d "
            "failed=%d: to %s, answered 0x%04X %s", ctx.pool_id, ctx.calling_ae, ctx.source_ip, uid,
            len(info.references), len(info.failed), to, code, comment)
        await ctx.answer(context_id, commands.response(command, code, comment=comment))
        relay.telemetry.operation(service=command.name, status=code)
        self.ops.record_failure(command.name, code, comment=comment, by_backend=False)

    async def _holder(self, info: Information) -> str | None:
        """The backend that holds most of a report's instances, known locations first."""
        ctx = self.ctx
        sops = [uid for _, uid in info.references] + [uid for _, uid, _ in info.failed]
        where = await ctx.relay.instance_backends(ctx.pool_id, sops)
        unknown = [uid for uid in sops if uid not in where]
        if unknown:
            where.update(await ctx.relay.locate_instances(ctx.pool_id, calling_ae=ctx.calling_ae,
                                                          sop_uids=unknown))
        counts: dict[str, int] = defaultdict(int)
        for backend_id in where.values():
            counts[backend_id] += 1
        return min(counts, key=lambda b: (-counts[b], b)) if counts else None


def _encode(ds: Dataset, transfer_syntax: str) -> bytes:
    implicit, little, _ = scan.encoding(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_dataset(buffer, ds)
    return buffer.getvalue()
