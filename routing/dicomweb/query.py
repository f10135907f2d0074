"""QIDO-RS (PS3.18 10.6): a query naming one bound study goes to its backend; any other is
asked of every healthy backend at once and the answers merged: each object once (by its
level's UID), ``offset``/``limit`` applied to the merged list (each backend asked for
``offset + limit``), and every backend not heard from named in a ``Warning`` header."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from routing.dicom.uids import uid_problem
from routing.dicomweb.context import Context, WebBackend, client_user, read_bounded, source_ip
from routing.dicomweb.native_xml import native_multipart, wants_xml
from routing.dicomweb.passthrough import backend_url, relay_get, relayed_outcome
from routing.dicomweb.placing import study_bound

logger = logging.getLogger("synthiq.routing")

SERVICE = "QIDO-RS"
ANSWER_LIMIT = 64 * 1024 * 1024  # one backend's JSON answer, at most
RETRIEVE_URL = "00081190"
# The attribute that names an object at each level (the last segment of the path).
LEVEL_KEYS = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}
STUDY_KEYS = ("StudyInstanceUID", "0020000D")


class QueryError(Exception):
    pass


def query_study(segments: list[str], query: Any) -> str | None:
    """The one study a query names (in its path or as a single-valued key), if any."""
    if len(segments) >= 3 and segments[0] == "studies":
        return segments[1]
    for key in STUDY_KEYS:
        values = query.getall(key, [])
        if len(values) == 1 and "," not in values[0] and "\\" not in values[0] and not uid_problem(values[0]):
            return str(values[0])
    return None


def _number(query: Any, key: str) -> int | None:
    value = query.get(key)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 9:
        raise QueryError(f"{key} must be a non-negative integer")
    return int(value)


async def qido(ctx: Context, request: web.Request, segments: list[str]) -> web.StreamResponse:
    for uid in segments[1::2]:  # studies/{uid}/series/{uid}/instances: the UIDs in the path
        problem = uid_problem(uid)
        if problem:
            logger.warning("QIDO-RS pool=%s source_ip=%s: path %r refused: UID invalid: %s", ctx.pool.id,
                           source_ip(request), "/".join(segments)[:200], problem)
            return web.Response(status=400, text=f"UID in the path invalid: {problem}\n")
    path = "/".join(segments)
    study = query_study(segments, request.query)
    if study is not None:
        bound = await study_bound(ctx, study)
        backend = ctx.pool.backend(bound) if bound else None
        if backend is not None:
            status: int | None = None
            try:
                response = await relay_get(ctx, request, backend, path, service=SERVICE, study_uid=study)
                status = response.status
            finally:
                _audit(ctx, request, path, *relayed_outcome(status, backend))
            return response
    try:
        limit, offset = _number(request.query, "limit"), _number(request.query, "offset") or 0
    except QueryError as exc:
        _audit(ctx, request, path, False, str(exc))
        return web.Response(status=400, text=f"{exc}\n")
    healthy = set(ctx.relay.placement.healthy_backends(ctx.pool.id))
    asked = [b for b in ctx.pool.backends if b.id in healthy]
    warnings = [f"backend {b.id} unhealthy, not asked" for b in ctx.pool.backends if b.id not in healthy]
    params = [(k, v) for k, v in request.query.items() if k not in ("limit", "offset")]
    if limit is not None:
        params.append(("limit", str(offset + limit)))
    started = time.perf_counter()
    answers = await asyncio.gather(*(backend_query(ctx, request, b, path, params) for b in asked))
    key = LEVEL_KEYS[segments[-1]]
    base = ctx.client_base(request)
    # uid -> (backend, object) per backend that has it, in the order first seen.
    found: dict[str, list[tuple[WebBackend, dict[str, Any]]]] = {}
    for backend, (objects, problem) in zip(asked, answers, strict=True):
        if problem:
            warnings.append(f"backend {backend.id} {problem}")
            continue
        for obj in objects:
            uid = _value(obj.get(key))
            if isinstance(uid, str):
                found.setdefault(uid, []).append((backend, obj))
    merged = []
    for copies in found.values():
        backend, obj = copies[0] if len(copies) == 1 else await _bound_copy(ctx, copies)
        merged.append(_rewritten(obj, base + backend.root, base + ctx.pool.base_path))
    page = merged[offset:offset + limit if limit is not None else None]
    headers = {"Warning": ", ".join(f'299 SynthIQ "{w}"' for w in warnings)} if warnings else {}
    logger.info("QIDO-RS pool=%s source_ip=%s path=%r fanned out to %d backend(s): %d match(es), %d returned%s "
                "seconds=%.3f", ctx.pool.id, source_ip(request), path[:200], len(asked), len(merged), len(page),
                f" ({'; '.join(warnings)})" if warnings else "", time.perf_counter() - started)
    ctx.relay.telemetry.operation(service=SERVICE, status=0xA700 if warnings else 0x0000)
    _audit(ctx, request, path, not warnings, "; ".join(warnings))
    return merged_answer(request, page, headers)


def merged_answer(request: web.Request, page: list[dict[str, Any]], headers: dict[str, str]) -> web.Response:
    """The merged matches as the client asked: DICOM JSON, or (Accept naming XML and not
    JSON) one Native DICOM Model part per match, as the backend itself would answer."""
    if wants_xml(request.headers.get("Accept", "")):
        body, kind = native_multipart(page)
        return web.Response(status=200, body=body, headers=headers | {"Content-Type": kind})
    return web.Response(status=200, body=json.dumps(page).encode(), content_type="application/dicom+json",
                        headers=headers)


def _audit(ctx: Context, request: web.Request, path: str, ok: bool, text: str) -> None:
    ctx.relay.telemetry.audit.web_query(address=source_ip(request), user=client_user(request),
                                        resource=f"{ctx.pool.base_path}/{path}", query=request.query_string,
                                        ok=ok, text=text)


async def _bound_copy(ctx: Context, copies: list[tuple[WebBackend, dict[str, Any]]]) -> tuple[WebBackend,
                                                                                              dict[str, Any]]:
    """Of the same object found on several backends (a study split across nodes), the copy
    of the backend its study is bound to, else the first (in the pool's order)."""
    study = _value(copies[0][1].get(LEVEL_KEYS["studies"]))
    bound = await study_bound(ctx, study) if isinstance(study, str) and not uid_problem(study) else None
    return next(((b, o) for b, o in copies if b.id == bound), copies[0])


async def backend_query(ctx: Context, request: web.Request, backend: WebBackend, path: str,
               params: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], str]:
    """One backend's matches, or why there are none to use."""
    headers = ctx.headers(request, backend) | {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}
    try:
        async with ctx.session.get(backend_url(backend, path, urlencode(params)), headers=headers,
                                   timeout=ctx.timeout, allow_redirects=False) as answer:
            if answer.status == 204:
                return [], ""
            if answer.status != 200:
                return [], f"answered HTTP {answer.status}"
            body = await read_bounded(answer.content, ANSWER_LIMIT)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return [], f"not reached ({type(exc).__name__})"
    if len(body) > ANSWER_LIMIT:
        return [], f"answered more than {ANSWER_LIMIT} bytes"
    try:
        objects = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return [], "answered something that is not JSON"
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        return [], "answered JSON that is not a list of objects"
    return objects, ""


def _value(attribute: Any) -> Any:
    if isinstance(attribute, dict) and isinstance(attribute.get("Value"), list) and attribute["Value"]:
        return attribute["Value"][0]
    return None


def _rewritten(obj: dict[str, Any], theirs: str, ours: str) -> dict[str, Any]:
    url = _value(obj.get(RETRIEVE_URL))
    if isinstance(url, str) and url.startswith(theirs) and theirs != ours:
        obj = obj | {RETRIEVE_URL: {"vr": "UR", "Value": [ours + url[len(theirs):]]}}
    return obj
