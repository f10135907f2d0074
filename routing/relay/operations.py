"""Query, retrieve and storage commitment, relayed to the backend that holds the study.

Every operation reads its request's identifier (a few hundred bytes) with the same scan
as a C-STORE header, then:

- **C-FIND** naming one Study Instance UID that is bound goes to the study's backend
  (Tier 1). A query that names no study, or a study with no binding, goes to every
  healthy backend at once; their pending responses are streamed to the modality as they
  come, a match that several backends return is sent once, and one final response
  closes it for the whole pool. A C-CANCEL is passed to every backend still answering.
- **C-MOVE / C-GET** of a bound study go to its backend; of an unbound one, to the
  backend a C-FIND finds it on (``routing.locator``). A C-GET's C-STORE sub-operations
  come back on the same association and are relayed to the modality, and its answers
  back to the backend. No binding is ever created by a query or a retrieve.
- **N-ACTION** and **N-EVENT-REPORT** (storage commitment): ``routing.relay.commitment``.

Responses are relayed as the bytes the backend sent (Message IDs are the modality's own,
since requests go out unchanged). SynthIQ's own failures use each service's codes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from routing.dicom import commands, pdu, scan, services, status, uids
from routing.dicom.pdu import ProtocolError
from routing.relay.commitment import Commitments
from routing.relay.connection import first_ready
from routing.relay.failures import LinkLost, OperationFailed, Violation
from routing.relay.outbound import BackendLink, OutboundUnavailable
from routing.relay.peer import relay_message

if TYPE_CHECKING:
    from routing.relay.inbound import InboundAssociation

logger = logging.getLogger("synthiq.routing")

QUERY_RETRIEVE = (commands.C_FIND_RQ, commands.C_MOVE_RQ, commands.C_GET_RQ)
# The keys an identifier is read for (all before (0020,000E), where the scan stops).
IDENTIFIER_TAGS = (0x00080018, scan.QUERY_RETRIEVE_LEVEL, 0x00100020, scan.STUDY_UID, 0x0020000E)


# The UID keys of an identifier that routing reads, checked before anything is asked.
UID_KEYS = ((scan.STUDY_UID, "Study Instance UID", "study-uid"), (0x0020000E, "Series Instance UID", "series-uid"),
            (0x00080018, "SOP Instance UID", "sop-instance-uid"))


def _unavailable_status(field: int) -> int:
    return {commands.C_FIND_RQ: status.FIND_OUT_OF_RESOURCES, commands.N_ACTION_RQ: status.PROCESSING_FAILURE
            }.get(field, status.RETRIEVE_UNABLE_TO_COUNT)


def _lost_status(field: int) -> int:
    return {commands.C_FIND_RQ: status.FIND_OUT_OF_RESOURCES, commands.N_ACTION_RQ: status.PROCESSING_FAILURE
            }.get(field, status.RETRIEVE_UNABLE_TO_PERFORM)


def identifier_keys(data: bytes, transfer_syntax: str) -> dict[int, str]:
    """The routing keys of a query identifier (empty strings where absent)."""
    scanner = scan.HeaderScanner(transfer_syntax, wanted=IDENTIFIER_TAGS, stop=0x0020000E, require=None)
    header = scanner.feed(data, last=True)
    assert header is not None
    return dict(header.values)


def single_uid(value: str) -> str | None:
    """A Study Instance UID that names exactly one study (no list, no wildcard)."""
    if not value or "\\" in value or "*" in value or "?" in value:
        return None
    return value


class Operations:
    """The non-storage operations of one inbound association (see the module docstring)."""

    def __init__(self, assoc: InboundAssociation):
        self.assoc = assoc
        self.network = assoc.network
        # Requests a backend sent on its association (C-GET sub-operations, an
        # N-EVENT-REPORT): Message ID -> the link the modality's answer goes back to.
        self.reverse: dict[int, BackendLink] = {}
        # SynthIQ's own requests to the modality (a local N-EVENT-REPORT): answers dropped.
        self.own: set[int] = set()
        self._next_own_id = 0xFF00
        # Storage commitments accepted by a backend whose report has not reached the
        # modality yet: while there are any, the association is waiting, not idle.
        self.reports_awaited = 0
        self.commitments = Commitments(self)

    # -- entry points -----------------------------------------------------------------
    async def query_retrieve(self, context_id: int, command: commands.Command) -> None:
        assoc = self.assoc
        assert assoc.peer is not None
        data = await assoc.peer.stream.read_data_set(context_id, self.network.network_timeout_seconds,
                                                limit=self.network.header_hold_bytes)
        service = command.name
        try:
            keys = identifier_keys(data, assoc.transfer_syntax(context_id))
        except scan.HeaderError as exc:
            keys = {}
            invalid: tuple[str, str] | None = ("identifier", f"unreadable: {exc}")
        else:
            invalid = next(((reason, uids.comment(name, problem)) for tag, name, reason in UID_KEYS
                            if (problem := uids.uid_key_problem(keys.get(tag, "")))), None)
        if invalid is not None:
            reason, comment = invalid
            assoc.relay.telemetry.invalid_input(service=service, reason=reason)
            logger.error("%s pool=%s calling_ae=%s source_ip=%s: refused with 0xA900: %s", service, assoc.pool_id,
                         uids.shown(assoc.calling_ae), assoc.source_ip, comment)
            await assoc.answer(context_id, commands.response(command, status.IDENTIFIER_DOES_NOT_MATCH,
                                                              comment=comment[:commands.ERROR_COMMENT_MAX]))
            assoc.relay.telemetry.operation(service=service, status=status.IDENTIFIER_DOES_NOT_MATCH)
            return
        level = keys.get(scan.QUERY_RETRIEVE_LEVEL, "").upper()
        study = single_uid(keys.get(scan.STUDY_UID, ""))
        unasked: list[str] = []
        targets: list[str] = []
        comment, by_backend = "", True
        try:
            bound = await assoc.relay.bound_backend(assoc.pool_id, study) if study else None
            if bound is not None:
                targets, reason = [bound], "affinity-hit"
            elif command.field == commands.C_FIND_RQ:
                targets, reason = assoc.relay.placement.healthy_backends(assoc.pool_id), "fan-out"
                unasked = assoc.relay.placement.unhealthy_backends(assoc.pool_id)
            else:
                targets, reason = [await self._locate(context_id, keys, level)], "located"
            if not targets:
                raise OperationFailed(_unavailable_status(command.field), f"pool {assoc.pool_id}: no healthy backend")
            if assoc.peer.stream.has_input and await self._from_modality(context_id, command, []):
                raise OperationFailed(status.CANCEL, "")  # cancelled before any backend was asked
            logger.info("%s pool=%s calling_ae=%s source_ip=%s level=%s study=%s backends=%s reason=%s",
                        service, assoc.pool_id, assoc.calling_ae, assoc.source_ip, level or "-", study or "-",
                        ",".join(targets), reason)
            if reason == "fan-out" and (len(targets) > 1 or unasked):
                code = await self._find_all(targets, context_id, command, data, level, unasked)
            else:
                code = await self._one(targets[0], context_id, command, data)
        except OperationFailed as failure:
            log = logger.info if failure.status == status.CANCEL else logger.error
            log("%s pool=%s calling_ae=%s: answered 0x%04X %s", service, assoc.pool_id, assoc.calling_ae,
                failure.status, failure.comment)
            code, comment, by_backend = failure.status, failure.comment, False
            await assoc.answer(context_id, commands.response(command, failure.status, comment=failure.comment))
        assoc.relay.telemetry.operation(service=service, status=code)
        self.record_failure(service, code, study=study or "", backends=targets, comment=comment, by_backend=by_backend)
        assoc.relay.telemetry.audit.query_retrieve(assoc, command, data, keys, context_id, code, targets)

    def record_failure(self, service: str, code: int, *, study: str = "", backends: list[str] | None = None,
                       comment: str = "", by_backend: bool) -> None:
        """An operation that ended in failure, for the operator's list of recent failures
        (a cancel, a success or a warning is none)."""
        if status.is_success(code) or code == status.CANCEL:
            return
        assoc = self.assoc
        assoc.relay.telemetry.store_failed(
            service=service, pool_id=assoc.pool_id, calling_ae=assoc.calling_ae, source_ip=assoc.source_ip,
            study_uid=study, sop_instance_uid="", backend_id=",".join(backends or []), status=code, comment=comment,
            by_backend=by_backend)

    async def answer_from_modality(self, context_id: int, command: commands.Command) -> bool:
        """A response from the modality to a request that came from a backend (or from
        SynthIQ): relay it (or drop it). False if it answers nothing known."""
        assoc = self.assoc
        assert assoc.peer is not None
        message_id = command.responded_to
        if message_id in self.own:
            self.own.discard(message_id)
            if command.has_data_set:
                await assoc.peer.stream.skip_data_set(context_id, self.network.network_timeout_seconds)
            return True
        link = self.reverse.pop(message_id, None) if message_id is not None else None
        if link is None:
            return False
        if link.usable:
            try:
                await relay_message(assoc.peer.stream, link, context_id, command.raw, [], last=not command.has_data_set,
                                    timeout=self.network.dimse_timeout_seconds,
                                    drain_timeout=self.network.dimse_timeout_seconds)
            except LinkLost as exc:  # that backend's operation is lost; the modality's goes on
                logger.warning("pool=%s: an answer to backend %s could not be relayed: %s", assoc.pool_id,
                               link.backend.id, exc)
                link.abort()
                if assoc.peer.stream.data_set_unread:
                    await assoc.peer.stream.skip_data_set(context_id, self.network.network_timeout_seconds)
        elif command.has_data_set:
            await assoc.peer.stream.skip_data_set(context_id, self.network.network_timeout_seconds)
        return True

    async def relay_unsolicited(self, link: BackendLink) -> None:
        """A backend's request on an association with no operation in flight (an
        N-EVENT-REPORT after its N-ACTION-RSP): to the modality, its answer back later."""
        assoc = self.assoc
        link.claim()
        try:
            context_id, request = await link.stream.read_command(self.network.dimse_timeout_seconds)
            await self._to_modality(link, context_id, request)
        except Exception as exc:  # the backend or the modality went away: end that link
            logger.warning("pool=%s: a request from backend %s could not be relayed: %s", assoc.pool_id,
                           link.backend.id, exc)
            link.abort()
        finally:
            if link.usable:
                link.unclaim(idle_seconds=self.network.outbound_idle_seconds, on_idle=assoc.link_idle)

    # -- one backend --------------------------------------------------------------------
    async def forward(self, backend_id: str, context_id: int, command: commands.Command, data: bytes) -> int:
        """Relay a request (its data set already read) to one backend and everything back
        until its final response; a failure of SynthIQ's own is answered here. The status."""
        try:
            return await self._one(backend_id, context_id, command, data)
        except OperationFailed as failure:
            await self.assoc.answer(context_id, commands.response(command, failure.status, comment=failure.comment))
            return failure.status

    async def _one(self, backend_id: str, context_id: int, command: commands.Command, data: bytes) -> int:
        """Send the request to one backend and relay everything until its final response."""
        link = await self._link(backend_id, context_id, command)
        link.claim()
        try:
            return await self._exchange(link, context_id, command, data)
        except LinkLost as exc:
            link.abort()
            self.assoc.links.pop(backend_id, None)
            if isinstance(exc, Violation):
                self.assoc.relay.telemetry.backend_violation(backend_id)
                raise OperationFailed(_lost_status(command.field), str(exc)) from exc
            raise OperationFailed(_lost_status(command.field), f"backend {backend_id} aborted/timed out") from exc
        finally:
            if link.usable:
                link.unclaim(idle_seconds=self.network.outbound_idle_seconds, on_idle=self.assoc.link_idle)

    async def _exchange(self, link: BackendLink, context_id: int, command: commands.Command, data: bytes) -> int:
        assoc = self.assoc
        assert assoc.peer is not None
        link.send_message(context_id, command.raw, [data])
        timeout = self.network.dimse_timeout_seconds
        while True:
            try:
                await first_ready([link.conn, assoc.conn], timeout, f"from backend {link.backend.id}")
                if link.stream.has_input:
                    reply_context, reply = await link.stream.read_command(timeout)
                    if not reply.is_request:
                        mismatch = commands.response_mismatch(command, reply)
                        if mismatch:
                            raise Violation(f"backend {link.backend.id} {mismatch}")
                        await self._to_modality(link, reply_context, reply)
                        if reply.status not in status.PENDING:
                            return reply.status if reply.status is not None else status.PROCESSING_FAILURE
                    else:
                        await self._to_modality(link, reply_context, reply)
                    continue
            except (ConnectionError, TimeoutError, ProtocolError) as exc:
                raise LinkLost(f"{type(exc).__name__}: {exc}") from exc
            await self._from_modality(context_id, command, [link])

    async def _to_modality(self, link: BackendLink, context_id: int, message: commands.Command) -> None:
        """Relay a message from a backend to the modality (a request is remembered, so the
        modality's answer finds its way back)."""
        assoc = self.assoc
        if message.is_request and message.message_id is not None:
            self.reverse[message.message_id] = link
        if message.field == commands.N_EVENT_REPORT_RQ:
            self.reports_awaited = max(0, self.reports_awaited - 1)
        assert assoc.peer is not None
        async with assoc.peer.write_lock:
            await relay_message(link.stream, assoc.peer, context_id, message.raw, [], last=not message.has_data_set,
                                timeout=self.network.dimse_timeout_seconds,
                                drain_timeout=self.network.dimse_timeout_seconds)

    async def _from_modality(self, context_id: int, command: commands.Command, links: list[BackendLink]) -> bool:
        """A message from the modality while ``command`` is in flight: a C-CANCEL (passed to
        ``links``; True), or an answer to a backend's request. Anything else breaks the
        one-operation-at-a-time rule."""
        assoc = self.assoc
        assert assoc.peer is not None
        message_context, message = await assoc.peer.stream.read_command(self.network.network_timeout_seconds)
        if message.field == commands.C_CANCEL_RQ and message.responded_to == command.message_id:
            logger.info("%s pool=%s calling_ae=%s: C-CANCEL passed to %s", command.name, assoc.pool_id,
                        assoc.calling_ae, ",".join(link.backend.id for link in links) or "no backend")
            for link in links:
                if link.usable:
                    link.send_message(message_context, message.raw)
            return True
        if not message.is_request and await self.answer_from_modality(message_context, message):
            return False
        raise ProtocolError(f"{message.name} while {command.name} (message {command.message_id}) is in flight: "
                            "no asynchronous operations were negotiated", pdu.REASON_UNEXPECTED_PDU)

    # -- every backend --------------------------------------------------------------------
    async def _find_all(self, backend_ids: list[str], context_id: int, command: commands.Command, data: bytes,
                        level: str, unasked: list[str]) -> int:
        """A C-FIND on every backend at once, matches merged (each sent once). Ends in
        0xA700 naming every backend that may hold matches and was not heard from (``unasked``
        are unhealthy), after the matches that did come: a partial answer is not a Success."""
        assoc = self.assoc
        links: list[BackendLink] = []
        failures: list[str] = [f"backend {b} unhealthy, not asked" for b in unasked]
        for backend_id in backend_ids:
            try:
                link = await self._link(backend_id, context_id, command)
            except OperationFailed as failure:
                failures.append(failure.comment)
                continue
            link.claim()
            link.send_message(context_id, command.raw, [data])
            links.append(link)
        key_tag = services.LEVEL_KEYS.get(level, scan.STUDY_UID)
        seen: set[str] = set()
        active = list(links)
        cancelled = False
        matches = 0
        timeout = self.network.dimse_timeout_seconds
        try:
            while active:
                try:
                    await first_ready([link.conn for link in active] + [assoc.conn], timeout, "from the backends")
                except TimeoutError:
                    for link in active:
                        failures.append(f"backend {link.backend.id} timed out")
                        link.abort()
                    break
                for link in list(active):
                    if not link.stream.has_input:
                        continue
                    try:
                        reply_context, reply = await link.stream.read_command(timeout)
                        identifier = (await link.stream.read_data_set(reply_context, timeout,
                                                                      limit=self.network.header_hold_bytes)
                                      if reply.has_data_set else b"")
                    except (ConnectionError, TimeoutError, ProtocolError) as exc:
                        failures.append(f"backend {link.backend.id} went away ({type(exc).__name__})")
                        link.abort()
                        active.remove(link)
                        continue
                    mismatch = None if reply.is_request else commands.response_mismatch(command, reply)
                    if reply.is_request or mismatch:
                        failures.append(f"backend {link.backend.id} {mismatch or 'sent a request'}")
                        logger.error("C-FIND pool=%s: backend %s %s: aborted", assoc.pool_id, link.backend.id,
                                     mismatch or f"sent {reply.name} during a C-FIND")
                        if mismatch:
                            assoc.relay.telemetry.backend_violation(link.backend.id)
                        link.abort()
                        active.remove(link)
                        continue
                    if reply.status in status.PENDING and identifier:
                        key = identifier_keys(identifier, assoc.transfer_syntax(reply_context)).get(key_tag, "")
                        if key and key in seen:
                            continue  # the same study (series, instance) from another backend
                        seen.add(key)
                        matches += 1
                        assert assoc.peer is not None
                        await assoc.peer.answer(reply_context, reply.raw, [identifier])
                    elif reply.status not in status.PENDING:
                        active.remove(link)
                        if reply.status not in (status.SUCCESS, status.CANCEL):
                            failures.append(f"backend {link.backend.id} answered 0x{reply.status or 0:04X}")
                if assoc.peer is not None and assoc.peer.stream.has_input:
                    cancelled |= await self._from_modality(context_id, command, active)
        finally:
            for link in links:
                if link.usable:
                    link.unclaim(idle_seconds=self.network.outbound_idle_seconds, on_idle=assoc.link_idle)
                else:
                    assoc.links.pop(link.backend.id, None)
        if cancelled:
            code, comment = status.CANCEL, ""
        elif failures:
            code, comment = status.FIND_OUT_OF_RESOURCES, "; ".join(failures)
        else:
            code, comment = status.SUCCESS, ""
        logger.info("C-FIND pool=%s calling_ae=%s merged %d match(es) from %d backend(s): 0x%04X %s", assoc.pool_id,
                    assoc.calling_ae, matches, len(links), code, comment)
        await assoc.answer(context_id, commands.response(command, code, comment=comment))
        return code

    # -- helpers ------------------------------------------------------------------------
    async def _link(self, backend_id: str, context_id: int, command: commands.Command) -> BackendLink:
        try:
            link = await self.assoc.link_to(backend_id)
        except OutboundUnavailable as exc:
            raise OperationFailed(_unavailable_status(command.field), exc.comment) from None
        if context_id not in link.accepted.contexts:
            raise OperationFailed(_unavailable_status(command.field),
                                  f"backend {backend_id} does not offer {command.name} here")
        return link

    async def _locate(self, context_id: int, keys: dict[int, str], level: str) -> str:
        """The backend a study-level (or patient-level) C-FIND finds the request's study on."""
        assoc = self.assoc
        study = keys.get(scan.STUDY_UID, "")
        patient = keys.get(0x00100020, "")
        found, silent = await assoc.relay.locate(assoc.pool_id, calling_ae=assoc.calling_ae, study_uid=study,
                                                  patient_id=patient)
        if found:
            return found[0]
        if silent:
            raise OperationFailed(status.RETRIEVE_UNABLE_TO_COUNT,
                                  f"could not ask {', '.join(silent)} where the study is")
        healthy = assoc.relay.placement.healthy_backends(assoc.pool_id)
        if not healthy:
            raise OperationFailed(status.RETRIEVE_UNABLE_TO_COUNT, f"pool {assoc.pool_id}: no healthy backend")
        return healthy[0]  # nobody holds it: the backend answers its own "nothing matched"
