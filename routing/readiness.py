"""Readiness (``/readyz``): does every pool's DICOM listener answer an association, and
every pool's DICOMweb listener an HTTP request?

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

A DICOMweb listener is asked ``GET {BasePath}/`` (HTTPS, unverified, when it has TLS): any
HTTP answer is ready (a 404, or a 401 where clients must authenticate: nothing reaches a
backend) but a 503 (runproxy stopping, or the per-address limit reached); a refused
connection, silence or something that is not HTTP is not.

The result is kept for a second and shared by concurrent requests (``check_all``), so a
flood of /readyz requests cannot become a flood of associations.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from pynetdicom.presentation import build_context

from routing.dicom import negotiation, pdu
from routing.dicom.association import AssociateAccepted, AssociateRejected
from routing.dicom.blocking import BlockingAssociation
from routing.dicom.sop_classes import VERIFICATION

CHECK_AE_TITLE = "SYNTHIQ-READYZ"
CHECK_TIMEOUT_SECONDS = 2.0
# However often /readyz is asked, the listeners see at most one check association this often.
PROBE_MIN_INTERVAL_SECONDS = 1.0

logger = logging.getLogger("synthiq.readiness")


@dataclass(frozen=True)
class Listener:
    pool_id: str
    ae_title: str
    host: str  # as configured: a wildcard address is checked on loopback
    port: int
    tls: bool = False
    # "DICOM" (an association is asked for) or "DICOMweb" (an HTTP request, under base_path).
    service: str = "DICOM"
    base_path: str = ""


_registered: list[Listener] | None = None


def register(listeners: list[Listener]) -> None:
    global _registered
    _registered = list(listeners)


def registered() -> list[Listener] | None:
    return _registered


def _request(called_ae: str) -> bytes:
    context = build_context(VERIFICATION, negotiation.VERIFICATION_SYNTAXES[0])
    context.context_id = 1
    rq = negotiation.AssociateRequest(primitive=None, protocol_version=1,  # type: ignore[arg-type]
                                      calling_ae=CHECK_AE_TITLE, called_ae=called_ae,
                                      application_context=negotiation.APPLICATION_CONTEXT, contexts=[context],
                                      max_pdu=16384)
    return negotiation.outbound_request(rq, {1: context}, called_ae=called_ae, max_pdu=16384)


def check(listener: Listener, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> str:
    """"" when the listener answers an association; otherwise why not, in generic words (the
    reason is served unauthenticated): the detail, an exception's text, goes to the log."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listener.host, listener.host)
    where = f"{host}:{listener.port}"
    if listener.service == "DICOMweb":
        return _check_http(listener, host, timeout=timeout)
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
            association = BlockingAssociation(sock, timeout, max_pdata=1 << 16)
            answer = association.request(_request(listener.ae_title))
            if isinstance(answer, AssociateAccepted):
                try:
                    association.release()
                except (OSError, pdu.ProtocolError):
                    pass  # released or closed: either way the listener answered
                return ""
            if isinstance(answer, AssociateRejected):
                if tuple(answer.pdu.raw[7:10]) == negotiation.REJECT_CALLING_AE:
                    return ""  # an allow-list turned the check's AE title away: the listener answered
                logger.warning("readyz pool=%s listener=%s association rejected: %r", listener.pool_id, where,
                               negotiation.rejection_text(answer.pdu.raw))
                return f"pool {listener.pool_id}: listener rejected the association"
            logger.warning("readyz pool=%s listener=%s answered with %s", listener.pool_id, where, answer)
            return f"pool {listener.pool_id}: listener gave an unexpected answer"
    except pdu.ProtocolError as exc:
        logger.warning("readyz pool=%s listener=%s answered with something that is no PDU: %s", listener.pool_id,
                       where, exc)
        return f"pool {listener.pool_id}: listener gave an unexpected answer"
    except TimeoutError:
        logger.warning("readyz pool=%s listener=%s no answer within %.0fs", listener.pool_id, where, timeout)
        return f"pool {listener.pool_id}: no answer to an association request within {timeout:.0f}s"
    except OSError as exc:
        logger.warning("readyz pool=%s listener=%s did not answer: %r", listener.pool_id, where, exc)
        return f"pool {listener.pool_id}: listener did not answer"


def _check_http(listener: Listener, host: str, *, timeout: float) -> str:
    where = f"{host}:{listener.port}"
    connection: http.client.HTTPConnection
    if listener.tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, listener.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, listener.port, timeout=timeout)
    try:
        connection.request("GET", f"{listener.base_path}/", headers={"User-Agent": CHECK_AE_TITLE,
                                                                      "Connection": "close"})
        answer = connection.getresponse()
        answer.read(64 * 1024)
        if answer.status == 503:
            logger.warning("readyz pool=%s DICOMweb listener=%s answered 503", listener.pool_id, where)
            return f"pool {listener.pool_id}: DICOMweb listener answered 503 (stopping or busy)"
        return ""
    except TimeoutError:
        logger.warning("readyz pool=%s DICOMweb listener=%s no answer within %.0fs", listener.pool_id, where, timeout)
        return f"pool {listener.pool_id}: DICOMweb listener: no answer to an HTTP request within {timeout:.0f}s"
    except (OSError, http.client.HTTPException) as exc:
        logger.warning("readyz pool=%s DICOMweb listener=%s did not answer HTTP: %r", listener.pool_id, where, exc)
        return f"pool {listener.pool_id}: DICOMweb listener did not answer HTTP"
    finally:
        connection.close()


@dataclass(frozen=True)
class _Probe:
    listeners: tuple[Listener, ...]
    started: float  # time.monotonic()
    finished: float
    reasons: tuple[str, ...]


_probe_lock = threading.Lock()  # one probe in flight; held while probing
_last_probe: _Probe | None = None


def check_all(listeners: list[Listener], *, min_interval: float = PROBE_MIN_INTERVAL_SECONDS) -> list[str]:
    """check() for each listener, probing at most once per min_interval whatever the request
    rate: /readyz is unauthenticated, and each probe is a real association on every pool.
    Requests that arrive while a probe is in flight wait for it and share its result."""
    global _last_probe
    wanted = tuple(listeners)
    arrived = time.monotonic()
    with _probe_lock:
        last = _last_probe
        if last is not None and last.listeners == wanted and (
            last.finished >= arrived or time.monotonic() - last.started < min_interval
        ):
            return list(last.reasons)
        started = time.monotonic()
        reasons = tuple(check(listener) for listener in wanted)
        _last_probe = _Probe(wanted, started, time.monotonic(), reasons)
        return list(reasons)
