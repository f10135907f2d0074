"""One STOW-RS request to one backend, for the instances of one study of one client
request, its body streamed as the client's parts arrive.

The first part is held until it ends, up to the bytes the queue would hold (``HOLD_LIMIT``):
a request that carries that one part alone goes with Content-Length, in one write, with no
task, queue or chunked framing (one instance per request is the common case, and its cost
is per request). Past that, or when a second part (or another study's request: ``stream``)
comes, the body is streamed through a small bounded queue: while the backend reads slowly,
``put`` waits, and so does the reading of the client's body (memory follows the queue, never
the part size). If the backend's request ends early (refused, unreachable, reset), what is
queued is dropped and every later ``put`` returns at once, so the client's body is still
read to its end and the other studies of the request go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from routing.dicomweb.context import read_bounded
from routing.dicomweb.store_response import RESPONSE_LIMIT, Sent

logger = logging.getLogger("synthiq.routing")

QUEUE_CHUNKS = 16  # chunks of up to 64 KiB queued per backend request
# A first part held whole, at most: what the queue holds, so holding costs no more memory.
HOLD_LIMIT = QUEUE_CHUNKS * 64 * 1024


class _Abort(Exception):
    """The client's request went wrong: the backend's body is cut (nothing of it is a success)."""


_END = _Abort()  # not raised: the end of the body (a sentinel no chunk can equal)


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (unreachable, reset, timed out)
    body: bytes = b""
    error: str = ""


@dataclass
class Upload:
    backend_id: str
    study_uid: str
    url: str
    headers: dict[str, str]
    session: aiohttp.ClientSession
    timeout: aiohttp.ClientTimeout
    sent: list[Sent] = field(default_factory=list)
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.boundary = uuid.uuid4().hex
        self.started = time.perf_counter()
        self._queue: asyncio.Queue[bytes | BaseException] | None = None  # made when the body streams
        self._parts = 0
        self.stalled = ""
        self.held: list[bytes] | None = []  # the body while it is held (None once streamed)
        self._held_bytes = 0
        self.task: asyncio.Task[Answer] | None = None

    async def stream(self) -> bool:
        """Stop holding: the request starts, chunked, with what was held."""
        if self.held is None:
            return self.task is not None and not self.task.done()
        held, self.held = self.held, None
        self._queue = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self.task = asyncio.ensure_future(self._post(self._body()))
        self.task.add_done_callback(self._drain)
        for chunk in held:
            if not await self._queued(chunk):
                return False
        return True

    async def begin_part(self) -> bool:
        if self._parts:  # a second part: the request is no longer one part of known size
            await self.stream()
        lead = b"\r\n" if self._parts else b""
        self._parts += 1
        return await self.put(lead + f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())

    async def put(self, data: bytes | memoryview) -> bool:
        """Hold or queue bytes of the body; False once the backend's request has ended. A
        backend that takes nothing for the read timeout is cut (the client's body is not
        held waiting on it, and its other studies go on)."""
        if (self.task is None and self.held is None) or (self.task is not None and self.task.done()):
            return False  # aborted, or the backend's request has ended
        if not data:
            return True
        self.nbytes += len(data)
        if self.held is not None:
            if self._held_bytes + len(data) <= HOLD_LIMIT:
                self.held.append(bytes(data))
                self._held_bytes += len(data)
                return True
            if not await self.stream():
                return False
        return await self._queued(bytes(data))

    async def _queued(self, item: bytes | BaseException) -> bool:
        assert self.task is not None and self._queue is not None  # streaming
        stall = self.timeout.sock_read or 600.0
        try:
            await asyncio.wait_for(self._queue.put(item), stall)
        except TimeoutError:
            self.stalled = f"the backend took nothing of the body for {stall:.0f}s"
            self.task.cancel()
            return False
        return not self.task.done()

    async def finish(self) -> Answer:
        """End the body and wait for the backend's answer. A body still held is whole: it
        goes in one write with its Content-Length."""
        await self.put(f"\r\n--{self.boundary}--\r\n".encode())
        if self.held is not None:  # one part, whole: posted here, no task or queue
            held, self.held = self.held, None
            return await self._post(b"".join(held))
        if self.task is None:  # aborted while held: nothing was sent
            return Answer(None, b"", "cut: the client's request failed")
        if not self.task.done():
            await self._queued(_END)
        await asyncio.wait({self.task})
        if self.task.cancelled():
            return Answer(None, b"", self.stalled or "cut")
        return self.task.result()

    def abort(self) -> None:
        """Cut the body: the backend sees a request that never ends well, and stores nothing
        (a body still held was never sent)."""
        self.held = None
        if self.task is not None and self._queue is not None and not self.task.done():
            try:
                self._queue.put_nowait(_Abort())
            except asyncio.QueueFull:
                self.task.cancel()

    def _drain(self, _: object) -> None:
        assert self._queue is not None
        while not self._queue.empty():  # a put waiting for room goes on, and finds the task done
            self._queue.get_nowait()

    async def _body(self) -> AsyncIterator[bytes]:
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _post(self, data: Any) -> Answer:
        # The answer is merged, so it must come as JSON and uncompressed (the client's own
        # Accept says what SynthIQ answers it, not what it asks the backend).
        headers = self.headers | {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={self.boundary}',
            "Accept": "application/dicom+json", "Accept-Encoding": "identity"}
        try:
            async with self.session.post(self.url, data=data, headers=headers, timeout=self.timeout,
                                         allow_redirects=False) as response:
                body = await read_bounded(response.content, RESPONSE_LIMIT)
                if len(body) > RESPONSE_LIMIT:
                    return Answer(response.status, b"", f"answer longer than {RESPONSE_LIMIT} bytes")
                return Answer(response.status, body)
        except _Abort:
            return Answer(None, b"", "cut: the client's request failed")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Answer(None, b"", f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:  # aiohttp may wrap the cut body's _Abort in its own types
            return Answer(None, b"", f"{type(exc).__name__}: {exc}"[:200])
