"""One DICOM connection on the event loop: bytes in, whole PDUs out, flow control both ways.

``PduConnection`` is an ``asyncio.BufferedProtocol``. It frames PDUs as bytes arrive (see
``routing.dicom.pdu.PduBuffer``) and hands them to a single reader coroutine through
``next_pdu()``. Flow control:

- reading: once more than ``read_limit`` bytes wait unread, the transport stops
  reading from the socket (TCP then pushes back on the peer) until the reader catches
  up. So a peer that SynthIQ is not ready to listen to costs a bounded buffer, and a
  relay whose other side is slow stops reading this side.
- writing: the transport's write buffer has a high/low water mark; ``drain()`` waits
  while it is over the high mark, so what is written to a slow peer is bounded too.

TCP_QUICKACK is re-armed after every read (see ``routing.dicom.netopts``). While no
coroutine claims the connection (an idle outbound association), PDUs go to an idle
handler instead, so a backend's own A-RELEASE-RQ or A-ABORT is answered at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import cast

from routing.dicom import netopts
from routing.dicom.pdu import Pdu, PduBuffer, ProtocolError

logger = logging.getLogger("synthiq.relay")

WRITE_HIGH_WATER = 512 * 1024
WRITE_LOW_WATER = 128 * 1024
CHUNK_MIN = 16 * 1024
CHUNK_MAX = 1 << 20
CHUNK_TAIL = 4096  # a chunk with less room than this is retired for a new one


class ConnectionClosed(ConnectionError):
    """The peer closed or reset the connection."""


class TimedOut(TimeoutError):
    """Nothing arrived (or nothing could be written) within the timer."""


class PduConnection(asyncio.BufferedProtocol):
    def __init__(self, *, name: str, max_length: int, max_pdata_length: int | None = None,
                 read_limit: int = 1 << 20,
                 on_open: Callable[[PduConnection], None] | None = None):
        self.name = name
        self.framer = PduBuffer(max_length=max_length, max_pdata_length=max_pdata_length)
        self.read_limit = read_limit
        self.ready: deque[Pdu] = deque()
        self.ready_bytes = 0
        self.transport: asyncio.Transport | None = None
        self.sock = None
        self.peer: tuple[str, int] = ("?", 0)
        self.error: Exception | None = None  # set once: closed, reset, or a protocol error
        self.lost = asyncio.get_running_loop().create_future()  # done when the connection is gone
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self.write_paused = False
        self.received = 0
        self.on_open = on_open
        # Called with this connection when PDUs arrive and no coroutine has claimed it.
        self.idle_handler: Callable[[PduConnection], None] | None = None
        self.claimed = False
        # Reads land in chunks of our own (asyncio.BufferedProtocol): a PDU inside one
        # chunk is passed on as a view, with no copy. A chunk starts small (an idle or
        # dripping connection costs little) and doubles while reads fill it (bulk data).
        self._chunk: memoryview | None = None
        self._filled = 0
        self._chunk_size = CHUNK_MIN
        self._discarding = False

    # -- asyncio.BufferedProtocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's transports and uvloop's (which do not derive from asyncio.Transport) alike
        self.attach(cast(asyncio.Transport, transport))
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (str(peer[0]), int(peer[1]))
        if self.on_open is not None:
            self.on_open(self)

    def attach(self, transport: asyncio.Transport) -> None:
        """Use ``transport`` (the plain one, or the TLS one after ``start_tls``)."""
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.sock = transport.get_extra_info("socket")
        if self.sock is not None:
            netopts.tune(self.sock)

    def get_buffer(self, sizehint: int) -> memoryview:
        chunk = self._chunk
        if chunk is None or len(chunk) - self._filled < CHUNK_TAIL:
            # Never written to again once filled: views of it may be queued for writing.
            self._chunk = chunk = memoryview(bytearray(self._chunk_size))
            self._filled = 0
        return chunk[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        assert self._chunk is not None
        start = self._filled
        self._filled += nbytes
        if self._filled == len(self._chunk) and self._chunk_size < CHUNK_MAX:
            self._chunk_size *= 2
        self.data_received(self._chunk[start:self._filled])

    def data_received(self, data: bytes | memoryview) -> None:
        if self.sock is not None:
            netopts.quickack(self.sock)
        self.received += len(data)
        if self._discarding:
            return
        framer = self.framer
        framer.feed(data)
        try:
            while (pdu := framer.next()) is not None:
                self.ready.append(pdu)
                self.ready_bytes += len(pdu)
        except ProtocolError as exc:
            self._fail(exc)
        if self.ready_bytes + framer.buffered > self.read_limit and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        if self.ready:
            if not self.claimed and self.idle_handler is not None:
                self.idle_handler(self)
            self._wake()

    def eof_received(self) -> bool:
        self._fail(ConnectionClosed(f"{self.name}: the peer closed the connection"))
        return False  # close our side too (after a half-close of ours, that ends it)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionClosed(f"{self.name}: connection {'reset: ' + str(exc) if exc else 'closed'}"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.write_paused = False
        self._wake_drain()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # -- for the coroutine that owns it -------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def share_waiter(self, waiter: asyncio.Future[None] | None,
                     unless_other_than: asyncio.Future[None] | None = None) -> None:
        """Wake ``waiter`` when a PDU arrives (several connections may share one waiter);
        None clears it, unless it has been replaced by another than ``unless_other_than``."""
        if unless_other_than is None or self._waiter is unless_other_than:
            self._waiter = waiter

    def pop(self) -> Pdu | None:
        """The next PDU already framed, without waiting."""
        if not self.ready:
            return None
        pdu = self.ready.popleft()
        self.ready_bytes -= len(pdu)
        if self._reading_paused and self.ready_bytes + self.framer.buffered <= self.read_limit // 2:
            self._reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        return pdu

    async def next_pdu(self, timeout: float | None) -> Pdu:
        """The next PDU. Raises ProtocolError, ConnectionClosed or TimedOut. PDUs that
        arrived before the connection ended are still returned first."""
        pdu = self.pop()
        if pdu is not None:
            return pdu
        if self.error is not None:
            raise self.error
        await self._wait(timeout, "waiting for a PDU")
        pdu = self.pop()
        if pdu is not None:
            return pdu
        assert self.error is not None
        raise self.error

    async def _wait(self, timeout: float | None, what: str) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await _within(self._waiter, timeout, f"{self.name}: nothing for {timeout or 0:.0f}s {what}")
        finally:
            self._waiter = None

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self, timeout: float | None) -> None:
        """Wait while the write buffer is over its high mark. Raises ConnectionClosed or TimedOut."""
        if self.write_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await _within(self._drain_waiter, timeout,
                              f"{self.name}: the peer read nothing for {timeout or 0:.0f}s")
            finally:
                self._drain_waiter = None
        if self.error is not None and isinstance(self.error, ConnectionClosed) and self.lost.done():
            raise self.error

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.lost.done()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def send_and_close(self, last_words: bytes, *, linger: float) -> None:
        """Send a final PDU (an A-ABORT) and close the way PS3.8 wants (AA-1 then ARTIM):
        half-close, drop whatever the peer still sends, close at its EOF or after
        ``linger`` seconds. Closing at once with unread bytes would make the kernel
        reset the connection, and the peer might never read the A-ABORT."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._discarding:
            return  # already closing (or already said its last words)
        transport.write(last_words)
        self._discarding = True
        self.ready.clear()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the peer is gone already (reset): nothing to linger for
            transport.abort()
            return
        asyncio.get_running_loop().call_later(linger, self.close)

    @property
    def lingering(self) -> bool:
        """Closing after a final PDU (see ``send_and_close``)."""
        return self._discarding

    def abort_transport(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def _within(waiter: asyncio.Future[None], timeout: float | None, message: str) -> None:
    """Await ``waiter``, or raise TimedOut(message) after ``timeout`` seconds. A plain
    timer on the future: cheaper than a task per wait (asyncio.wait_for)."""
    timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter) if timeout is not None else None
    try:
        await waiter
    except TimeoutError:
        raise TimedOut(message) from None
    finally:
        if timer is not None:
            timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def first_ready(conns: list[PduConnection], timeout: float | None, what: str) -> None:
    """Wait until any of ``conns`` has a PDU (or has ended). Nothing is taken from them,
    so the wait can be abandoned at any point without losing a byte."""
    if any(c.ready or c.error is not None for c in conns):
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    for conn in conns:
        conn.share_waiter(waiter)
    try:
        await _within(waiter, timeout, f"nothing for {timeout or 0:.0f}s {what}")
    finally:
        for conn in conns:
            conn.share_waiter(None, unless_other_than=waiter)
