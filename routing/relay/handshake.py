"""A TLS pool's connection between its TCP accept and the end of its TLS handshake.

The event loop does the handshake from the first byte (``connect_accepted_socket`` with
``ssl=``): a ClientHello already waiting when the socket is accepted is read by the TLS
layer itself, on asyncio's loop and on uvloop alike (uvloop hands such bytes to a
plaintext protocol before a later ``start_tls`` can take them: uvloop issue #707). Until
the handshake ends, a ``Handshake`` stands for the connection among the pending ones, so
the pending bounds and the connect-to-AC deadline count from the accept, as for plain
TCP; dropping it (eviction, shutdown) cancels the handshake, which closes the socket.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

PLAINTEXT_SIGNS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "unknown protocol",
                   "wrong version number")


@dataclass(eq=False)
class Handshake:
    source_ip: str
    task: asyncio.Task[Any]

    def drop(self) -> None:
        self.task.cancel()


class _Refusals(Protocol):
    telemetry: Any

    def log_refusal(self, kind: str, line: str) -> None: ...


def failed(relay: _Refusals, *, pool_id: str, pool_ae: str, address: str, exc: BaseException) -> None:
    """A failed handshake is logged (rate-limited: a scanner can make thousands) and counted
    by reason: plaintext DICOM on the TLS port, or any other failure."""
    text = "no handshake before the deadline" if isinstance(exc, TimeoutError) else f"{exc or type(exc).__name__}"
    plaintext = any(sign in text for sign in PLAINTEXT_SIGNS)
    kind = "tls-plaintext" if plaintext else "tls-handshake"
    relay.telemetry.association_rejected(kind, pool_id=pool_id, source_ip=address,
                                         detail=f"TLS handshake failed: {text}")
    relay.telemetry.audit.association_rejected(reason=kind, address=address, pool_ae=pool_ae, text=text)
    relay.log_refusal(kind, f"pool={pool_id} source_ip={address}: TLS handshake failed"
                            f"{' (plaintext on the TLS port?)' if plaintext else ''}: {text} "
                            "(repeats within a minute counted, not logged)")
