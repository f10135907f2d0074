"""Socket options and TLS contexts for DICOM connections, inbound and outbound.

TCP_NODELAY on every socket: Nagle's algorithm on a relay's socket, against a peer that
delays its ACKs, caps an association near 24 small instances a second. TCP_QUICKACK
(Linux) is not sticky: the kernel falls back to delayed ACKs after a while, so the relay
re-arms it after every read; that is what lets a modality that leaves Nagle on (most do)
send as fast as the network allows (docs/performance.md, "Where the time goes").
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any

QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def tune(sock: Any) -> None:
    """NODELAY and an immediate ACK. Buffer sizes are left to the kernel's autotuning
    (setting SO_RCVBUF/SO_SNDBUF pins them and measured no faster on loopback)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return  # the connection is already gone: its reader will see that
    quickack(sock)


def quickack(sock: Any) -> None:
    if QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        except OSError:
            pass


@dataclass(frozen=True)
class ClientTls:
    """How to reach a backend over TLS: its CA, and SynthIQ's client certificate if it wants one."""

    ca: str | None = None
    certificate: str | None = None
    key: str | None = None


def server_tls(*, certificate: str, key: str, ca: str | None = None,
               require_client_certificate: bool = False) -> ssl.SSLContext:
    """TLS 1.2+ for a listener; a client certificate is required when the pool says so."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certificate, key)
    if ca:
        ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_NONE
    return ctx


def client_tls(spec: ClientTls) -> ssl.SSLContext:
    """TLS 1.2+ to a backend, verified against its CA, with SynthIQ's certificate when given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=spec.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if spec.certificate:
        ctx.load_cert_chain(spec.certificate, spec.key)
    return ctx


def tune_pynetdicom(event: Any) -> None:
    """``evt.EVT_CONN_OPEN`` handler for pynetdicom's threaded AE (the simulators, the load test):
    the same socket options on its associations."""
    assoc_socket = event.assoc.dul.socket
    if assoc_socket is not None and assoc_socket.socket is not None:
        tune(assoc_socket.socket)
