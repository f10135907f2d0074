"""STOW-RS (PS3.18 10.5): a client's multipart/related body read part by part, each part
held only until its Study Instance UID is read, placed like a C-STORE, and streamed into one
request per study to the study's backend; the backends' answers merged into one.

A part that cannot be placed or forwarded is failed, alone: 0xC000 when it has no valid
Study Instance UID (or SOP UIDs), 0xA700 when no backend can take it or its backend cannot
be reached. A body that is not a well-formed multipart (or too large, or too slow) fails the
whole request with a 4xx, and every backend request it had started is cut, so no backend
takes half of it as a success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from routing.dicom.part10 import SOP_CLASS, SOP_INSTANCE, Identity, Part10Error, Part10Scanner
from routing.dicom.tags import PATIENT_NAME
from routing.dicom.uids import shown, uid_problem
from routing.dicomweb.context import Context, client_user, source_ip
from routing.dicomweb.native_xml import wants_xml
from routing.dicomweb.placing import study_place
from routing.dicomweb.store_response import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    Sent,
    StoreResponse,
)
from routing.dicomweb.upload import Upload

logger = logging.getLogger("synthiq.routing")

SERVICE = "STOW-RS"
CHUNK = 64 * 1024
MAX_BOUNDARY = 70  # RFC 2046 5.1.1
# The Part 10 preamble and meta held besides the data set's header bytes.
META_HOLD = 64 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        self.status, self.reason = status, reason
        super().__init__(reason)


@dataclass
class _Part:
    """One part's outcome: forwarded to ``upload``, or failed with ``reason``."""

    index: int
    meta: dict[int, str] = field(default_factory=dict)  # the File Meta UIDs, once read
    identity: Identity | None = None
    upload: Upload | None = None
    failure: tuple[int, str] | None = None


def check_media_type(request: web.Request) -> str:
    """The boundary of a multipart/related body of application/dicom parts; BadRequest else."""
    mime = request.content_type
    params = request.headers.get("Content-Type", "")
    if mime != "multipart/related":
        raise BadRequest(415, f"Content-Type {shown(mime)} not relayed (multipart/related only)")
    parsed = aiohttp.multipart.parse_mimetype(params)
    kind = parsed.parameters.get("type", "application/dicom").strip('"').lower()
    if kind != "application/dicom":
        raise BadRequest(415, f"multipart/related of {shown(kind)} not relayed (application/dicom only)")
    boundary = parsed.parameters.get("boundary", "").strip('"')
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise BadRequest(400, "multipart/related without a boundary of 1-70 characters")
    return boundary


class Stow:
    """One client request."""

    def __init__(self, ctx: Context, request: web.Request, *, study_uid: str | None):
        self.ctx, self.request, self.study_uid = ctx, request, study_uid
        self.source_ip = source_ip(request)
        self.uploads: dict[str, Upload] = {}
        # SOP Instance UID -> (Patient ID, Patient's Name) of each part forwarded, for the audit trail.
        self.patients: dict[str, tuple[str, str]] = {}
        self.parts: list[_Part] = []
        self.nbytes = 0
        self.holding: Upload | None = None  # the last upload that took a part (it may hold it still)

    async def run(self) -> web.Response:
        started = time.perf_counter()
        ctx, pool = self.ctx, self.ctx.pool
        try:
            if self.study_uid is not None and uid_problem(self.study_uid):
                raise BadRequest(400, f"StudyInstanceUID in the URL invalid: {uid_problem(self.study_uid)}")
            check_media_type(self.request)
            if (self.request.content_length or 0) > pool.max_body_bytes:
                raise BadRequest(413, f"body of {self.request.content_length} bytes, at most {pool.max_body_bytes}")
            reader = aiohttp.MultipartReader(self.request.headers, self.request.content)
            while True:
                part = await self._timed(reader.next())
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise BadRequest(400, "a nested multipart part")
                await self._part(part)
            if not self.parts:
                raise BadRequest(400, "a multipart body without a part")
        except BadRequest as exc:
            return self._refused(exc.status, exc.reason)
        except TimeoutError:
            return self._refused(408, f"no body bytes for {ctx.network.network_timeout_seconds:.0f}s")
        except (ValueError, AssertionError, LookupError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError,
                ConnectionError, HttpProcessingError) as exc:  # aiohttp's multipart reader on a malformed body
            # (HttpProcessingError: a part's header line past 8190 bytes, LineTooLong)
            return self._refused(400, f"malformed multipart body: {type(exc).__name__}: {exc}"[:300])
        except BaseException:  # the client went away (cancelled): nothing it started may succeed
            for upload in self.uploads.values():
                upload.abort()
            raise
        response = await self._answers()
        stored, failed = len(response.referenced), len(response.failed)
        logger.info("STOW-RS pool=%s source_ip=%s parts=%d studies=%d stored=%d failed=%d bytes=%d status=%d "
                    "seconds=%.3f", pool.id, self.source_ip, len(self.parts), len(self.uploads), stored, failed,
                    self.nbytes, response.http_status, time.perf_counter() - started)
        if wants_xml(self.request.headers.get("Accept", "")):
            return web.Response(status=response.http_status, body=response.xml(), content_type="application/dicom+xml")
        return web.Response(status=response.http_status, body=response.body(), content_type="application/dicom+json")

    def _refused(self, status: int, reason: str) -> web.Response:
        for upload in self.uploads.values():
            upload.abort()
        logger.error("STOW-RS refused pool=%s source_ip=%s parts=%d studies=%s: %d %s", self.ctx.pool.id,
                     self.source_ip, len(self.parts), ",".join(self.uploads) or "-", status, reason)
        self.ctx.relay.telemetry.invalid_input(service=SERVICE, reason=str(status))
        self.ctx.relay.telemetry.operation(service=SERVICE, status=CANNOT_UNDERSTAND)
        return web.Response(status=status, text=reason + "\n")

    async def _timed(self, awaitable):  # type: ignore[no-untyped-def]
        async with asyncio.timeout(self.ctx.network.network_timeout_seconds):
            return await awaitable

    # -- one part -------------------------------------------------------------------------
    async def _part(self, part: aiohttp.BodyPartReader) -> None:
        entry = _Part(len(self.parts) + 1)
        self.parts.append(entry)
        kind = part.headers.get("Content-Type", "application/dicom").split(";")[0].strip().lower()
        if kind != "application/dicom":
            entry.failure = (CANNOT_UNDERSTAND, f"part of type {shown(kind)}, not application/dicom")
        scanner = Part10Scanner()
        held: list[bytes] = []
        held_bytes = 0
        limit = META_HOLD + self.ctx.network.header_hold_bytes
        while True:
            chunk = await self._timed(part.read_chunk(CHUNK))
            self.nbytes += len(chunk)
            if self.nbytes > self.ctx.pool.max_body_bytes:
                raise BadRequest(413, f"body longer than {self.ctx.pool.max_body_bytes} bytes")
            if entry.upload is not None:
                if chunk:
                    await entry.upload.put(chunk)
            elif entry.identity is None and entry.failure is None:
                held.append(chunk)
                held_bytes += len(chunk)
                try:
                    entry.identity = scanner.feed(chunk, last=not chunk)
                except Part10Error as exc:
                    entry.failure = (CANNOT_UNDERSTAND, str(exc))
                if entry.identity is None and entry.failure is None and held_bytes > limit:
                    entry.failure = (CANNOT_UNDERSTAND, f"Study Instance UID not within the first {limit} bytes")
                if entry.identity is not None:
                    await self._forward(entry, held)
                if entry.failure is not None or entry.upload is not None:
                    held, held_bytes = [], 0
            if not chunk:
                break
        if entry.failure is not None:
            entry.meta = scanner.meta  # a part failed before its Study UID still names its SOP Instance
            self._failed(entry)

    async def _forward(self, entry: _Part, held: list[bytes]) -> None:
        identity = entry.identity
        assert identity is not None
        for name, value in (("Study Instance UID", identity.study_uid), ("SOP Class UID", identity.sop_class_uid),
                            ("SOP Instance UID", identity.sop_instance_uid)):
            problem = uid_problem(value)
            if problem:
                entry.failure = (CANNOT_UNDERSTAND, f"{name} {shown(value)} invalid: {problem}")
                return
        suid = identity.study_uid.rstrip("\x00 ")
        if self.study_uid is not None and suid != self.study_uid:
            entry.failure = (CANNOT_UNDERSTAND, f"of study {suid}, not the study the URL names")
            return
        upload = self.uploads.get(suid)
        if upload is None:
            backend_id = await study_place(self.ctx, study_uid=suid, service=SERVICE, source_ip=self.source_ip,
                                           sop_uid=identity.sop_instance_uid)
            backend = self.ctx.pool.backend(backend_id) if backend_id else None
            if backend is None:
                entry.failure = (OUT_OF_RESOURCES, f"pool {self.ctx.pool.id}: no backend available")
                return
            upload = self.uploads[suid] = Upload(
                backend.id, suid, f"{backend.url}/studies", self.ctx.headers(self.request, backend, body=True),
                self.ctx.session, self.ctx.timeout)
        if self.holding is not None and self.holding is not upload:
            await self.holding.stream()  # one body held per client request at most: memory stays bounded
        self.holding = entry.upload = upload
        self.patients[identity.sop_instance_uid.rstrip("\x00 ")] = (identity.header.patient_id,
                                                                   identity.header.get(PATIENT_NAME))
        upload.sent.append(Sent(identity.sop_class_uid.rstrip("\x00 "), identity.sop_instance_uid.rstrip("\x00 ")))
        await upload.begin_part()
        for chunk in held:
            await upload.put(chunk)

    def _failed(self, entry: _Part) -> None:
        assert entry.failure is not None
        reason, why = entry.failure
        identity = entry.identity
        logger.error("STOW-RS part failed pool=%s source_ip=%s part=%d study=%s sop=%s: 0x%04X %s", self.ctx.pool.id,
                     self.source_ip, entry.index, shown(identity.study_uid) if identity else "-",
                     shown(entry.meta.get(SOP_INSTANCE, "")) if entry.meta else "-", reason, why)

    # -- the answers ----------------------------------------------------------------------
    async def _answers(self) -> StoreResponse:
        response = StoreResponse()
        for entry in self.parts:
            if entry.failure is not None:
                response.fail(sop_class_uid=entry.meta.get(SOP_CLASS, ""),
                              sop_instance_uid=entry.meta.get(SOP_INSTANCE, ""), reason=entry.failure[0])
        answers = await asyncio.gather(*(upload.finish() for upload in self.uploads.values()))
        base = self.ctx.client_base(self.request)
        for upload, answer in zip(self.uploads.values(), answers, strict=True):
            backend = self.ctx.pool.backend(upload.backend_id)
            assert backend is not None
            seconds = time.perf_counter() - upload.started
            if answer.status is None:
                logger.error("STOW-RS pool=%s source_ip=%s study=%s backend=%s: not reached (%s): %d instance(s) "
                             "failed", self.ctx.pool.id, self.source_ip, upload.study_uid, upload.backend_id,
                             answer.error, len(upload.sent))
                self.ctx.relay.telemetry.forward_failed(upload.backend_id, OUT_OF_RESOURCES)
                for sent in upload.sent:
                    response.fail(sop_class_uid=sent.sop_class_uid, sop_instance_uid=sent.sop_instance_uid,
                                  reason=OUT_OF_RESOURCES)
                self._audit(upload, backend.url, stored=set(), description=f"backend not reached ({answer.error})")
                continue
            before = len(response.referenced)
            problems = response.merge(answer=answer.body, sent=upload.sent,
                                      rewrite=(base + backend.root, base + self.ctx.pool.base_path))
            stored = response.referenced[before:]
            for item in stored:
                self.ctx.relay.placement.note_instance(
                    pool_id=self.ctx.pool.id, sop_instance_uid=item["00081155"]["Value"][0],
                    backend_id=upload.backend_id, study_uid=upload.study_uid)
            self._audit(upload, backend.url, stored={item["00081155"]["Value"][0] for item in stored},
                        description=f"backend answered HTTP {answer.status}")
            log = logger.info if not problems and len(stored) == len(upload.sent) else logger.warning
            log("STOW-RS pool=%s source_ip=%s study=%s backend=%s: HTTP %d, %d of %d stored%s bytes=%d seconds=%.3f",
                self.ctx.pool.id, self.source_ip, upload.study_uid, upload.backend_id, answer.status, len(stored),
                len(upload.sent), f" ({'; '.join(problems)})" if problems else "", upload.nbytes, seconds)
        for _ in response.referenced:
            self.ctx.relay.telemetry.operation(service=SERVICE, status=0x0000)
        for item in response.failed:
            reason = item.get("00081197", {}).get("Value", [OUT_OF_RESOURCES])[0]
            self.ctx.relay.telemetry.operation(service=SERVICE, status=reason if isinstance(reason, int) else 0x0110)
        return response

    def _audit(self, upload: Upload, backend_url: str, *, stored: set[str], description: str) -> None:
        """One 110104 per patient of the study this request sent to the backend (one, but
        for a study whose parts disagree on the patient)."""
        audit = self.ctx.relay.telemetry.audit
        if not audit.enabled:
            return
        classes: dict[tuple[str, str], Counter[str]] = {}
        failed: Counter[tuple[str, str]] = Counter()
        for sent in upload.sent:
            patient = self.patients.get(sent.sop_instance_uid, ("", ""))
            classes.setdefault(patient, Counter())[sent.sop_class_uid] += 1
            failed[patient] += sent.sop_instance_uid not in stored
        user = client_user(self.request)
        for (patient_id, patient_name), counts in classes.items():
            audit.web_stored(address=self.source_ip, user=user, backend_id=upload.backend_id, backend_url=backend_url,
                             study_uid=upload.study_uid, patient_id=patient_id, patient_name=patient_name,
                             sop_classes=dict(counts), failed=failed[(patient_id, patient_name)],
                             description=description if failed[(patient_id, patient_name)] else "")
