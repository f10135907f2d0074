"""Readiness (``/readyz``): does every pool's DICOM listener answer an association?

Checked the way a DICOM-aware balancer or keepalived would: an A-ASSOCIATE-RQ for
Verification to each listener, within a short deadline. An A-ASSOCIATE-AC (released at
once) is ready; so is a rejection of the check's own calling AE title (the pool has an
allow-list: the listener answered). A transient rejection (association limit, stopping),
a refused connection or silence (workers stopped, accepts paused) is not. The affinity
database is reported beside it but does not decide: SynthIQ keeps routing without it.

runproxy registers its listeners here at start, so the check needs no database; a web
process serving apart from runproxy falls back to the enabled pools in the database. A TLS
listener is checked through an unverified TLS handshake first; one that requires a client
certificate answers the handshake with an alert, which counts as answering.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from pynetdicom.presentation import build_context

from routing.dicom import negotiation, pdu

CHECK_AE_TITLE = "SYNTHIQ-READYZ"
CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Listener:
    pool_id: str
    ae_title: str
    host: str
    port: int
    tls: bool = False


_registered: list[Listener] | None = None


def register(listeners: list[Listener]) -> None:
    global _registered
    _registered = list(listeners)


def registered() -> list[Listener] | None:
    return _registered


def _request(called_ae: str) -> bytes:
    context = build_context(negotiation.VERIFICATION, negotiation.VERIFICATION_SYNTAXES[0])
    context.context_id = 1
    rq = negotiation.AssociateRequest(primitive=None, protocol_version=1,  # type: ignore[arg-type]
                                      calling_ae=CHECK_AE_TITLE, called_ae=called_ae,
                                      application_context=negotiation.APPLICATION_CONTEXT, contexts=[context],
                                      max_pdu=16384)
    return negotiation.outbound_request(rq, {1: context}, called_ae=called_ae, max_pdu=16384)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < pdu.PDU_HEADER_BYTES:
        chunk = sock.recv(pdu.PDU_HEADER_BYTES - len(head))
        if not chunk:
            raise ConnectionError("closed without an answer")
        head += chunk
    kind, length = pdu.HEADER.unpack(head)
    body = b""
    while len(body) < min(length, 1 << 16):
        chunk = sock.recv(min(length, 1 << 16) - len(body))
        if not chunk:
            raise ConnectionError("closed mid-answer")
        body += chunk
    return kind, head + body


def check(listener: Listener, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> str:
    """"" when the listener answers an association; otherwise why not."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listener.host, listener.host)
    where = f"{host}:{listener.port}"
    try:
        with socket.create_connection((host, listener.port), timeout=timeout) as raw_sock:
            raw_sock.settimeout(timeout)
            sock = raw_sock
            if listener.tls:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                try:
                    sock = context.wrap_socket(raw_sock)
                except ssl.SSLError:
                    return ""  # the listener answered the handshake (e.g. it wants a client certificate)
            sock.sendall(_request(listener.ae_title))
            kind, raw = _read_pdu(sock)
            if kind == pdu.A_ASSOCIATE_AC:
                sock.sendall(pdu.release_rq())
                try:
                    _read_pdu(sock)
                except OSError:
                    pass  # released or closed: either way the listener answered
                return ""
            if kind == pdu.A_ASSOCIATE_RJ:
                if tuple(raw[7:10]) == negotiation.REJECT_CALLING_AE:
                    return ""  # an allow-list turned the check's AE title away: the listener answered
                return f"{where}: association rejected ({negotiation.rejection_text(raw)})"
            return f"{where}: answered with PDU 0x{kind:02X}"
    except TimeoutError:
        return f"{where}: no answer to an association request within {timeout:.0f}s"
    except OSError as exc:
        return f"{where}: {exc}"
