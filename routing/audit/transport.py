"""Audit messages to the audit record repository: RFC 5424 syslog over TLS (RFC 5425,
octet-counted) or UDP (RFC 5426), from a bounded queue on a thread of their own.

Whoever audits calls ``AuditSender.offer`` with a function that builds the XML: it never
blocks (a full queue drops the message and counts it) and the XML is built on the sender's
thread, not the caller's (the relay's event loop does nothing but append to a deque).

Over TLS, while the repository cannot be reached, messages go to a spool file (owner-only:
it holds Patient IDs), bounded in bytes, in the frames they would have been sent in; once a
connection works again the spool is sent first, in order, then the queue. RFC 5425 has no
acknowledgement: a message written to a connection that the repository had already lost
(before SynthIQ could notice) is gone. The sender checks whether the repository closed the
connection before every write, which catches a repository that stopped; what it cannot
catch is a repository that died between that check and the write. UDP is best effort: no
spool. What had to be dropped (queue full, spool full, a datagram that could not be sent)
is counted, logged, and audited once messages can be recorded again (``on_drops``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger("synthiq.audit")

APP_NAME = "SynthIQ"
MSGID = "IHE+RFC-3881"
# Facility 10 (security/authorization), severity 5 (notice), as ATNA repositories expect.
PRI = 10 * 8 + 5
BOM = b"\xef\xbb\xbf"  # RFC 5424 6.4: a UTF-8 MSG starts with it
CONNECT_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0
RETRY_FIRST, RETRY_MAX = 0.5, 10.0
# The largest message sent in one UDP datagram (RFC 5426: IPv4's maximum payload).
UDP_MAX = 65507

Builder = Callable[[], bytes]
DropReport = Callable[[dt.datetime, int], list[bytes]]


def syslog_message(xml: bytes, *, when: dt.datetime, hostname: str, procid: int) -> bytes:
    """One RFC 5424 message: header, no structured data, the XML (one line) as MSG."""
    stamp = when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    host = "".join(c if "!" <= c <= "~" else "-" for c in hostname)[:255] or "-"
    return f"<{PRI}>1 {stamp} {host} {APP_NAME} {procid} {MSGID} - ".encode("ascii") + BOM + xml


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 (RFC 6587 3.4.1) framing: the length, a space, the message."""
    return b"%d %s" % (len(message), message)


class Spool:
    """Framed messages appended to one owner-only file, bounded in bytes; read back in order."""

    def __init__(self, path: Path, *, limit: int):
        self.path = path
        self.limit = limit
        self.offset_path = path.with_name(path.name + ".offset")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an older version, or created under another umask
        self._file = os.fdopen(fd, "ab", buffering=0)
        self.size = path.stat().st_size
        try:  # frames already sent before the last stop
            self.offset = min(int(self.offset_path.read_text()), self.size)
        except (OSError, ValueError):
            self.offset = 0

    @property
    def pending(self) -> bool:
        return self.size > self.offset

    def append(self, frame: bytes, *, reserved: bool = False) -> bool:
        """False (nothing written) when the frame does not fit the bound, unless ``reserved``
        (the alerts about dropped messages: a little over the bound rather than lost)."""
        if not reserved and self.size - self.offset + len(frame) > self.limit:
            return False
        self._file.write(frame)
        self.size += len(frame)
        return True

    def frames(self) -> Iterator[tuple[bytes, int]]:
        """(frame, offset after it) from the first frame not yet sent."""
        with open(self.path, "rb") as fp:
            fp.seek(self.offset)
            position = self.offset
            while True:
                digits = b""
                while (c := fp.read(1)) not in (b" ", b""):
                    digits += c
                if not digits.isdigit():
                    return
                message = fp.read(int(digits))
                if len(message) < int(digits):
                    return
                position += len(digits) + 1 + len(message)
                yield digits + b" " + message, position

    def sent_up_to(self, offset: int) -> None:
        self.offset = offset
        if self.offset >= self.size:  # all sent: start again from an empty file
            self._file.truncate(0)
            self.size = self.offset = 0
            self.offset_path.unlink(missing_ok=True)

    def save_offset(self) -> None:
        if self.offset:
            fd = os.open(self.offset_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fp:
                fp.write(str(self.offset))

    def close(self) -> None:
        self.save_offset()
        self._file.close()


class AuditSender:
    """The per-process sender: ``offer`` from any thread, ``start`` / ``stop`` once."""

    def __init__(self, *, transport: str, host: str, port: int, tls: ssl.SSLContext | None = None,
                 spool_path: Path | None = None, spool_limit: int = 64 << 20, queue_size: int = 10_000,
                 hostname: str | None = None, on_drops: DropReport | None = None):
        self.transport, self.host, self.port, self.tls = transport, host, port, tls
        self.hostname = hostname or socket.getfqdn()
        self.queue_size = queue_size
        self._queue: deque[tuple[dt.datetime, Builder]] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.spool = Spool(spool_path, limit=spool_limit) if transport == "tls" and spool_path else None
        self.on_drops = on_drops
        self.sent = self.spooled = self.dropped = 0
        self._unreported = 0  # drops not yet audited
        self._recorded = True  # whether the last message was sent or spooled
        self._drops_since: dt.datetime | None = None
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._retry_pause = RETRY_FIRST
        self._thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)

    # -- any thread -------------------------------------------------------------------------
    def start(self) -> AuditSender:
        self._thread.start()
        return self

    def offer(self, build: Builder, *, when: dt.datetime | None = None) -> bool:
        """Queue a message (``build`` returns its XML); False if the queue was full (counted)."""
        when = when or dt.datetime.now(dt.UTC)
        # deque.append and len are atomic: no lock on the caller's path but when dropping.
        if len(self._queue) >= self.queue_size:
            self._dropped(when, "the audit queue is full")
            return False
        self._queue.append((when, build))
        self._wake.set()
        return True

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "spooled": self.spooled, "dropped": self.dropped, "queued": len(self._queue),
                "spool_bytes": self.spool.size - self.spool.offset if self.spool else 0}

    def stop(self, *, timeout: float = 5.0) -> None:
        """Send (or spool) what is queued, bounded by ``timeout``, then close."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("audit: %d message(s) still queued at stop were not sent", len(self._queue))

    def _dropped(self, when: dt.datetime, why: str) -> None:
        with self._lock:
            self.dropped += 1
            self._unreported += 1
            first = self._drops_since is None
            if first:
                self._drops_since = when
        if first:
            logger.error("audit: dropping audit messages: %s (counted; audited once recording works again)", why)

    # -- the sender's thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=self._idle_wait())
            self._wake.clear()
            while self._queue:
                when, build = self._queue.popleft()
                try:
                    frame = self._frame(build(), when)
                except Exception:  # a bug in one message must not stop the audit trail
                    logger.exception("audit: a message could not be built")
                    continue
                self._deliver(frame)
                self._report_drops()
            if self.spool is not None and self.spool.pending and time.monotonic() >= self._retry_at:
                self._connect_and_replay()
                self._report_drops()
            if self._stopping.is_set() and not self._queue:
                break
        self._close()
        if self.spool is not None:
            self.spool.close()

    def _idle_wait(self) -> float | None:
        if self._stopping.is_set():
            return 0.0
        if self.spool is not None and self.spool.pending:
            return max(0.05, self._retry_at - time.monotonic())
        return None

    def _frame(self, xml: bytes, when: dt.datetime) -> bytes:
        message = syslog_message(xml, when=when, hostname=self.hostname, procid=os.getpid())
        return octet_counted(message) if self.transport == "tls" else message

    def _deliver(self, frame: bytes, *, reserved: bool = False) -> None:
        before = self.dropped
        self._deliver_or_drop(frame, reserved=reserved)
        self._recorded = self.dropped == before

    def _deliver_or_drop(self, frame: bytes, *, reserved: bool) -> None:
        if self.transport == "udp":
            self._send_datagram(frame)
            return
        assert self.spool is not None
        if self.spool.pending and time.monotonic() >= self._retry_at:
            self._connect_and_replay()
        if not self.spool.pending:
            try:
                self._send(frame)
                self.sent += 1
                return
            except OSError as exc:
                self._lost(exc)
        if self.spool.append(frame, reserved=reserved):
            self.spooled += 1
        else:
            self._dropped(dt.datetime.now(dt.UTC), f"the spool {self.spool.path} is full "
                                                   f"({self.spool.limit} bytes)")

    def _send_datagram(self, message: bytes) -> None:
        if len(message) > UDP_MAX:
            self._dropped(dt.datetime.now(dt.UTC), f"a message of {len(message)} bytes does not fit a datagram")
            return
        try:
            if self._sock is None:
                family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                self._sock = socket.socket(family, kind, proto)
                self._sock.connect(address)
            self._sock.send(message)
            self.sent += 1
        except OSError as exc:
            self._close()
            self._dropped(dt.datetime.now(dt.UTC), f"UDP to {self.host}:{self.port}: {exc}")

    def _send(self, frame: bytes) -> None:
        if self._sock is not None and _peer_closed(self._sock):
            logger.warning("audit: the repository %s:%d closed the connection; reconnecting", self.host, self.port)
            self._close()
        if self._sock is None:
            self._sock = self._open()
        self._sock.sendall(frame)

    def _open(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
        try:
            raw.settimeout(SEND_TIMEOUT)
            assert self.tls is not None
            sock = self.tls.wrap_socket(raw, server_hostname=self.host)
        except (OSError, ssl.SSLError):
            raw.close()
            raise
        logger.info("audit: connected to the audit record repository %s:%d (TLS)", self.host, self.port)
        return sock

    def _lost(self, exc: BaseException) -> None:
        if self.spool is not None and not self.spool.pending:
            logger.error("audit: the audit record repository %s:%d is unreachable (%s); spooling to %s",
                         self.host, self.port, exc, self.spool.path)
        self._close()
        self._retry_at = time.monotonic() + self._retry_pause
        self._retry_pause = min(self._retry_pause * 2, RETRY_MAX)

    def _connect_and_replay(self) -> None:
        """Send the spool, in order, from its first unsent frame; stop at the first failure."""
        assert self.spool is not None
        replayed = 0
        try:
            for frame, after in self.spool.frames():
                self._send(frame)
                self.spool.sent_up_to(after)
                replayed += 1
                self.sent += 1
        except OSError as exc:
            self._lost(exc)
            self.spool.save_offset()
            return
        self._retry_pause = RETRY_FIRST
        self._recorded = True  # the repository takes messages again
        if replayed:
            logger.warning("audit: the repository %s:%d is back: %d spooled message(s) sent", self.host, self.port,
                           replayed)

    def _report_drops(self) -> None:
        """Once a message could be recorded again, audit the drops since the last report."""
        if not self._unreported or self.on_drops is None or self._queue or not self._recorded:
            return
        if self.spool is not None and self.spool.pending:
            return  # the repository is still away: report once it has what was kept
        with self._lock:
            count, since = self._unreported, self._drops_since
            self._unreported, self._drops_since = 0, None
        assert since is not None
        logger.error("audit: %d audit message(s) dropped since %s (%d in all)", count, since.isoformat(),
                     self.dropped)
        now = dt.datetime.now(dt.UTC)
        for xml in self.on_drops(since, count):
            self._deliver(self._frame(xml, now), reserved=True)

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the repository closed the connection (a repository sends nothing, so anything
    readable is the end: EOF, a TLS close_notify, a reset)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.settimeout(0)
        try:
            return sock.recv(1) == b""
        finally:
            sock.settimeout(SEND_TIMEOUT)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ValueError):
        return True
