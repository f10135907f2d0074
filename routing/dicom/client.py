"""SynthIQ as a plain DICOM client: every short association it opens on its own account
(the health and syntax probes, asking backends where studies and instances are, storage
commitment shares and reports) goes through ``association`` here.

Blocking (pynetdicom's threaded AE): callers run these on an executor or probe thread,
never on the event loop. Every answer read here comes from a peer and is checked like
any other. The relay's own outbound associations (byte-exact forwarding) are not these:
they are ``routing.relay.outbound``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from routing.dicom import sop_classes
from routing.dicom.netopts import ClientTls, client_tls, tune_pynetdicom


@dataclass(frozen=True)
class Peer:
    """Whom SynthIQ calls: a backend (``id`` its id), or a requester (``id`` its AE title)."""

    id: str
    ae_title: str
    host: str
    port: int
    tls: ClientTls | None = None


class Unreachable(OSError):
    """The peer could not be associated with (``rejected``: it said no), or accepted none
    of the contexts asked for."""

    def __init__(self, message: str, *, rejected: bool = False):
        super().__init__(message)
        self.rejected = rejected


@contextmanager
def association(peer: Peer, *, calling_ae: str, contexts: list[str] | list[PresentationContext], timeout: float,
                roles: tuple[tuple[str, bool, bool], ...] = (), handlers: list[Any] | None = None,
                require_context: bool = True) -> Iterator[Association]:
    """An established association to ``peer`` proposing ``contexts`` (SOP class UIDs, or
    whole presentation contexts) and the SCP/SCU role selection ``roles`` ((SOP class, SCU
    role, SCP role)), released on exit. Raises Unreachable (an OSError) when it cannot be
    had, or when the peer accepts none of the contexts unless ``require_context`` is false."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    proposed: list[PresentationContext] | None = None
    if contexts and isinstance(contexts[0], PresentationContext):
        proposed = [cx for cx in contexts if isinstance(cx, PresentationContext)]
    else:
        for uid in contexts:
            ae.add_requested_context(str(uid))
    ext_neg: list[Any] = [build_role(uid, scu_role=scu, scp_role=scp) for uid, scu, scp in roles]
    tls_args = (client_tls(peer.tls), peer.host) if peer.tls else None
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args, contexts=proposed,
                             ext_neg=ext_neg or None,
                             evt_handlers=[(evt.EVT_CONN_OPEN, tune_pynetdicom), *(handlers or [])])
    except (OSError, ValueError, RuntimeError) as exc:
        raise Unreachable(f"association to {peer.id} ({peer.host}:{peer.port}) failed: {exc}") from None
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise Unreachable(f"association to {peer.id} ({peer.host}:{peer.port}, {peer.ae_title!r}) {why}",
                          rejected=assoc.is_rejected)
    try:
        if require_context and not assoc.accepted_contexts:
            raise Unreachable(f"{peer.id} accepted none of the presentation contexts proposed")
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def find(assoc: Association, model: str, identifier: Dataset) -> Iterator[Dataset]:
    """The matches of one C-FIND; raises LookupError when it ends in a failure status."""
    for response, match in assoc.send_c_find(identifier, model):
        if "Status" not in response:
            raise OSError("the C-FIND ended without a response (timed out or aborted)")
        code = int(response.Status)
        if code in (0xFF00, 0xFF01):
            if match is not None:
                yield match
        elif code not in (0x0000, 0xFE00):
            raise LookupError(f"C-FIND answered 0x{code:04X}")


def event_report(peer: Peer, *, calling_ae: str, event_type: int, information: Dataset, timeout: float) -> int:
    """Send one storage commitment N-EVENT-REPORT on a new association, proposing the SCP
    role for this side (the reporting one: PS3.4 J.3.3.1.2); the peer's status (raises OSError)."""
    with association(peer, calling_ae=calling_ae, contexts=[sop_classes.STORAGE_COMMITMENT_PUSH], timeout=timeout,
                     roles=((sop_classes.STORAGE_COMMITMENT_PUSH, False, True),)) as assoc:
        response, _ = assoc.send_n_event_report(information, event_type, sop_classes.STORAGE_COMMITMENT_PUSH,
                                             sop_classes.STORAGE_COMMITMENT_INSTANCE)
        if "Status" not in response:
            raise OSError(f"{peer.id} did not answer the N-EVENT-REPORT")
        return int(response.Status)
