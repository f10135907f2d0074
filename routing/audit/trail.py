"""The audit trail of one process: what SynthIQ reports, in its own words.

``AuditTrail`` is what the relay (through ``Telemetry.audit``), runproxy and the web app
call; ``NullTrail`` has the same methods and does nothing (the ``Audit`` block is absent:
the default, at the cost of one attribute lookup and one call).

Calls from the relay's event loop take plain values and return at once: C-STOREs are
counted per association (study, backend, patient -> SOP classes and outcomes) in memory,
and one DICOM Instances Transferred message per study, backend and patient is queued when
the association ends. Messages are built on the sender's thread (``transport``).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from routing.audit import messages as m
from routing.audit.transport import AuditSender
from routing.dicom.commands import C_FIND_RQ, C_GET_RQ, C_MOVE_RQ, MOVE_DESTINATION
from routing.dicom.status import is_success
from routing.dicom.tags import PATIENT_ID, PATIENT_NAME, STUDY_UID

logger = logging.getLogger("synthiq.audit")

# Association refusals that are audited as Node Authentication alerts (allow-lists, limits,
# TLS); a runproxy that is stopping or an idle association closed are not security events.
AUDITED_REFUSALS = frozenset({"source-address", "called-ae", "calling-ae", "association-limit", "address-limit",
                              "tls-handshake", "tls-plaintext", "protocol-version", "application-context"})
# A flood of refusals from one address is audited once per this many seconds and kind.
REFUSAL_AUDIT_SECONDS = 10.0
# A query data set larger than this is cut to it in the 110112 message (and said so): an
# audit record repository takes messages of tens of KiB (rsyslog: maxMessageSize).
QUERY_AUDIT_BYTES = 32 * 1024


@dataclass
class _Transfer:
    """The C-STOREs of one study to one backend (and one patient) on one association."""

    sop_classes: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    patient_name: str = ""


@dataclass(frozen=True)
class TrailSettings:
    transport: str
    host: str
    port: int
    tls: ssl.SSLContext | None
    site_id: str | None
    spool_path: Path
    spool_limit: int
    queue_size: int


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class NullTrail:
    """Audit off: every call does nothing (plain class attributes: a call on the relay's
    path costs what calling an empty function costs, nothing more)."""

    enabled = False
    start = stop = application_started = application_stopped = stored = association_ended = _nothing
    query_retrieve = rejected = association_rejected = reloaded = restricted_function = _nothing
    user_authentication = web_stored = web_query = web_retrieved = _nothing

    def stats(self) -> dict[str, int]:
        return {}


NULL_TRAIL: Any = NullTrail()


class AuditTrail:
    enabled = True

    def __init__(self, settings: TrailSettings, *, application: str = "", hostname: str | None = None):
        self.hostname = hostname or socket.getfqdn()
        self.source = m.Source(source_id=self.hostname, site_id=settings.site_id)
        self.application = application or f"SynthIQ@{self.hostname}"
        self.node = m.Participant(user_id=self.application, address=self.hostname)
        self.sender = AuditSender(transport=settings.transport, host=settings.host, port=settings.port,
                                  tls=settings.tls, spool_path=settings.spool_path, spool_limit=settings.spool_limit,
                                  queue_size=settings.queue_size, hostname=self.hostname, on_drops=self._drops)
        self._transfers: dict[object, dict[tuple[str, str, str], _Transfer]] = {}
        self._refusals: dict[tuple[str, str], float] = {}
        self.ae_titles: tuple[str, ...] = ()

    def start(self) -> AuditTrail:
        self.sender.start()
        return self

    def stop(self, *, timeout: float = 5.0) -> None:
        self.sender.stop(timeout=timeout)

    def stats(self) -> dict[str, int]:
        return self.sender.stats()

    def _emit(self, build: Callable[[], bytes], when: dt.datetime | None = None) -> None:
        self.sender.offer(build, when=when)

    # -- Application Activity (110100) -----------------------------------------------------
    def application_started(self, *, version: str, ae_titles: Sequence[str]) -> None:
        self.ae_titles = tuple(ae_titles)
        self._application(started=True, version=version)

    def application_stopped(self, *, version: str) -> None:
        self._application(started=False, version=version)

    def _application(self, *, started: bool, version: str) -> None:
        when, titles, launcher = _now(), self.ae_titles, _user()
        self._emit(lambda: m.application_activity(when=when, source=self.source, started=started,
                                                  application=self.application, version=version,
                                                  ae_titles=titles, launcher=launcher), when)

    # -- C-STORE: DICOM Instances Transferred (110104), one per study per association ----------
    def stored(self, assoc: Any, header: Any, sop_class_uid: str, backend_id: str, status: int) -> None:
        """A C-STORE the backend answered (on the event loop: a few dictionary updates)."""
        study_uid, patient_id = header.study_uid, header.patient_id
        per_assoc = self._transfers.get(assoc)
        if per_assoc is None:
            per_assoc = self._transfers[assoc] = {}
        key = (study_uid, backend_id, patient_id)
        transfer = per_assoc.get(key)
        if transfer is None:
            transfer = per_assoc[key] = _Transfer(patient_name=header.get(PATIENT_NAME)[:324])
        transfer.sop_classes[sop_class_uid] += 1
        if not is_success(status):
            transfer.failed += 1

    def association_ended(self, assoc: Any) -> None:
        """Queue one 110104 per study, backend and patient the association sent."""
        per_assoc = self._transfers.pop(assoc, None)
        if not per_assoc:
            return
        when = _now()
        sender = m.Participant.node(ae_title=assoc.calling_ae, address=assoc.source_ip)
        relay = m.Participant(user_id=self.application, ae_titles=(assoc.listener.ae_title,), address=self.hostname)
        for (study_uid, backend_id, patient_id), transfer in per_assoc.items():
            try:
                backend = assoc.relay.placement.address(backend_id)
                receiver = m.Participant.node(ae_title=backend.ae_title, address=backend.host)
            except KeyError:  # removed by a reload since
                receiver = m.Participant(user_id=backend_id)
            total = sum(transfer.sop_classes.values())
            outcome = (m.SUCCESS if not transfer.failed else
                       m.SERIOUS_FAILURE if transfer.failed == total else m.MINOR_FAILURE)
            text = f"{transfer.failed} of {total} instance(s) failed" if transfer.failed else ""
            classes = dict(transfer.sop_classes)
            name = transfer.patient_name
            self._emit(lambda s=study_uid, p=patient_id, r=receiver, c=classes, o=outcome, t=text, n=name:
                       m.instances_transferred(when=when, source=self.source, sender=sender, receiver=r, relay=relay,
                                               study_uid=s, sop_classes=c, patient_id=p, patient_name=n,
                                               outcome=o, description=t), when)

    # -- C-FIND: Query (110112); C-MOVE / C-GET: Begin Transferring (110102) --------------------
    def query_retrieve(self, assoc: Any, command: Any, identifier: bytes, keys: dict[int, str], context_id: int,
                       status: int, backends: Sequence[str] = ()) -> None:
        """After a C-FIND (110112) or a C-MOVE / C-GET (110102), with its final status."""
        when, field_ = _now(), command.field
        transfer_syntax = assoc.transfer_syntax(context_id)
        outcome = m.SUCCESS if status in (0x0000, 0xFE00) else m.MINOR_FAILURE
        text = "" if outcome == m.SUCCESS else f"status 0x{status:04X}"
        requestor = m.Participant.node(ae_title=assoc.calling_ae, address=assoc.source_ip, requestor=True)
        backend_nodes = []
        for backend_id in backends:
            try:
                backend = assoc.relay.placement.address(backend_id)
                backend_nodes.append(m.Participant.node(ae_title=backend.ae_title, address=backend.host))
            except KeyError:
                backend_nodes.append(m.Participant(user_id=backend_id))
        if field_ == C_FIND_RQ:
            responder = m.Participant(user_id=self.application, ae_titles=(assoc.listener.ae_title,),
                                      address=self.hostname)
            sop_class = command.sop_class_uid
            data = bytes(identifier[:QUERY_AUDIT_BYTES])
            if len(identifier) > QUERY_AUDIT_BYTES:
                text = f"{text}; " if text else ""
                text += f"query data set cut to its first {QUERY_AUDIT_BYTES} of {len(identifier)} bytes"
            self._emit(lambda: m.query(when=when, source=self.source, requestor=requestor, responder=responder,
                                       sop_class_uid=sop_class, identifier=data, transfer_syntax=transfer_syntax,
                                       outcome=outcome, description=text), when)
            return
        if field_ not in (C_MOVE_RQ, C_GET_RQ):
            return
        sender = backend_nodes[0] if backend_nodes else self.node
        if field_ == C_MOVE_RQ:
            receiver = m.Participant(user_id=command.text(MOVE_DESTINATION) or "-",
                                     ae_titles=(command.text(MOVE_DESTINATION) or "-",))
        else:
            receiver = requestor
        studies = [uid for uid in keys.get(STUDY_UID, "").split("\\") if uid][:100]
        patient_id = keys.get(PATIENT_ID, "")
        self._emit(lambda: m.begin_transferring(when=when, source=self.source, requestor=requestor, sender=sender,
                                                receiver=receiver, study_uids=studies, patient_id=patient_id,
                                                outcome=outcome, description=text), when)

    # -- DICOMweb: STOW-RS (110104), QIDO-RS (110112), WADO-RS (110102) ----------------------------
    # The client is named by its address, and by the user name it authenticated as to SynthIQ
    # when the pool asks it to (stored backend credentials); a backend by its DICOMweb URL.
    @staticmethod
    def _web_client(address: str, user: str) -> m.Participant:
        return m.Participant(user_id=user or address, requestor=True, address=address, user_name=user)

    @staticmethod
    def _web_backend(backend_id: str, url: str) -> m.Participant:
        return m.Participant(user_id=url or backend_id, address=urlsplit(url).hostname or "")

    def web_stored(self, *, address: str, user: str, backend_id: str, backend_url: str, study_uid: str,
                   patient_id: str, patient_name: str, sop_classes: dict[str, int], failed: int,
                   description: str = "") -> None:
        """110104 for the part of one STOW-RS request that went to one backend for one study
        and patient (the caller groups; here nothing is counted)."""
        when = _now()
        sender, receiver = self._web_client(address, user), self._web_backend(backend_id, backend_url)
        relay = m.Participant(user_id=self.application, address=self.hostname)
        total = sum(sop_classes.values())
        outcome = m.SUCCESS if not failed else m.SERIOUS_FAILURE if failed >= total else m.MINOR_FAILURE
        text = "; ".join(t for t in (f"{failed} of {total} instance(s) failed" if failed else "", description) if t)
        classes = dict(sop_classes)
        self._emit(lambda: m.instances_transferred(when=when, source=self.source, sender=sender, receiver=receiver,
                                                   relay=relay, study_uid=study_uid, sop_classes=classes,
                                                   patient_id=patient_id, patient_name=patient_name[:324],
                                                   outcome=outcome, description=text[:4000]), when)

    def web_query(self, *, address: str, user: str, resource: str, query: str, ok: bool, text: str = "") -> None:
        """110112 for a QIDO-RS request: the resource path and the query string as asked."""
        when = _now()
        requestor = self._web_client(address, user)
        responder = m.Participant(user_id=self.application, address=self.hostname)
        data = query.encode("utf-8", "replace")
        if len(data) > QUERY_AUDIT_BYTES:
            text = (f"{text}; " if text else "") + f"query cut to its first {QUERY_AUDIT_BYTES} of {len(data)} bytes"
            query = data[:QUERY_AUDIT_BYTES].decode("utf-8", "replace")
        self._emit(lambda: m.web_query(when=when, source=self.source, requestor=requestor, responder=responder,
                                       resource=resource, query=query, outcome=m.SUCCESS if ok else m.MINOR_FAILURE,
                                       description=text), when)

    def web_retrieved(self, *, address: str, user: str, backend_id: str, backend_url: str, study_uid: str,
                      resource: str, ok: bool, text: str = "") -> None:
        """110102 for a WADO-RS request, as for a C-GET: the backend sends, the client (the
        requestor) receives. The Patient ID is not known: the answer streams through unread."""
        when = _now()
        requestor, sender = self._web_client(address, user), self._web_backend(backend_id, backend_url)
        text = "; ".join(t for t in (f"WADO-RS {resource[:1000]}", text) if t)
        self._emit(lambda: m.begin_transferring(when=when, source=self.source, requestor=requestor, sender=sender,
                                                receiver=requestor, study_uids=[study_uid], outcome=m.SUCCESS if ok
                                                else m.MINOR_FAILURE, description=text), when)

    # -- Security Alert (110113) ----------------------------------------------------------------
    def rejected(self, assoc: Any, reason: str, text: str, calling_ae: str = "", called_ae: str = "") -> None:
        """An inbound association refused (see association_rejected)."""
        self.association_rejected(reason=reason, address=assoc.source_ip, pool_ae=assoc.listener.ae_title, text=text,
                                  calling_ae=calling_ae, called_ae=called_ae)

    def association_rejected(self, *, reason: str, address: str, pool_ae: str, text: str, calling_ae: str = "",
                             called_ae: str = "") -> None:
        """110126 Node Authentication: an association (or connection) refused by an allow-list,
        a limit or TLS. Once per address and reason every REFUSAL_AUDIT_SECONDS."""
        if reason not in AUDITED_REFUSALS:
            return
        now = time.monotonic()
        key = (reason, address)
        if now - self._refusals.get(key, -REFUSAL_AUDIT_SECONDS) < REFUSAL_AUDIT_SECONDS:
            return
        if len(self._refusals) > 10_000:  # a scan over many addresses: forget, stay bounded
            self._refusals.clear()
        self._refusals[key] = now
        when = _now()
        performer = m.Participant(user_id=calling_ae or address, requestor=True,
                                  ae_titles=(calling_ae,) if calling_ae else (), address=address)
        reporter = m.Participant(user_id=self.application, ae_titles=(pool_ae,), address=self.hostname)
        what = f"association refused ({reason}): {text}"
        if called_ae and repr(called_ae) not in what:
            what += f"; called AE title {called_ae!r}"
        self._emit(lambda: m.security_alert(when=when, source=self.source, kind=m.NODE_AUTHENTICATION,
                                            reporter=reporter, performer=performer, subject=address, text=what), when)

    def reloaded(self, *, path: str, changes: Sequence[str], ok: bool) -> None:
        """110131 Software Configuration: the config file re-read (SIGHUP), applied or refused."""
        when, uri = _now(), Path(path).resolve().as_uri()
        text = ("configuration reloaded: " + "; ".join(changes))[:4000] if ok else \
            "configuration reload refused (invalid file): " + "; ".join(changes)[:4000]
        # Who sent the SIGHUP is not known to the process: only the reporting node is named.
        self._emit(lambda: m.security_alert(when=when, source=self.source, kind=m.SOFTWARE_CONFIGURATION,
                                            reporter=self.node, subject=uri, subject_type=m.ID_URI, text=text,
                                            outcome=m.SUCCESS if ok else m.MINOR_FAILURE), when)

    def restricted_function(self, *, backend_id: str, address: str, text: str) -> None:
        """110132 Use of Restricted Function: a backend did what it may not (e.g. committed a
        study that is not bound to it). For the storage commitment code to call."""
        when = _now()
        performer = m.Participant(user_id=backend_id, requestor=True, address=address)
        self._emit(lambda: m.security_alert(when=when, source=self.source, kind=m.RESTRICTED_FUNCTION,
                                            reporter=self.node, performer=performer, subject=address or backend_id,
                                            text=text), when)

    def _drops(self, since: dt.datetime, count: int) -> list[bytes]:
        """110133 (recording stopped, when the first was dropped) and 110134 (started again,
        now), both naming the count; built on the sender's thread."""
        now = _now()
        text = f"{count} audit message(s) dropped since {since.isoformat()} (queue or spool full, or unsendable)"
        return [m.security_alert(when=since, source=self.source, kind=m.AUDIT_RECORDING_STOPPED, reporter=self.node,
                                 subject=self.application, text=text),
                m.security_alert(when=now, source=self.source, kind=m.AUDIT_RECORDING_STARTED, reporter=self.node,
                                 subject=self.application, text=text)]

    # -- User Authentication (110114) ------------------------------------------------------------
    def user_authentication(self, *, login: bool, user: str, address: str, success: bool, text: str = "") -> None:
        when = _now()
        system = m.Participant(user_id=self.application, address=self.hostname)
        self._emit(lambda: m.user_authentication(when=when, source=self.source, login=login, user=user or "-",
                                                 address=address, system=system,
                                                 outcome=m.SUCCESS if success else m.MINOR_FAILURE,
                                                 description=text), when)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return str(os.getuid())


# -- this process's trail -------------------------------------------------------------------------

_current: Any = NULL_TRAIL
_current_lock = threading.Lock()


def install(trail: Any) -> Any:
    """Make ``trail`` the one this process's web side (login signals) reports to."""
    global _current
    with _current_lock:
        _current = trail
    return trail


def current() -> Any:
    return _current
