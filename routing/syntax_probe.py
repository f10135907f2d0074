"""Which transfer syntaxes the pool's backends accept, learned by asking them.

Each backend is offered one storage class under every common transfer syntax (one per
presentation context) and what it accepts is remembered. When a modality proposes
several syntaxes for a context, SynthIQ then prefers one the backends take
(``routing.dicom.negotiation.prefer_accepted``): a modality that favours JPEG 2000 in
front of a pool that only stores uncompressed data is steered to uncompressed at
association time instead of failing every C-STORE afterwards.

The probe is a plain SCU, so it uses pynetdicom's threaded AE; runproxy runs it before
it starts serving.
"""

from __future__ import annotations

import logging

from pydicom import uid
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from routing.dicom.negotiation import syntax_ranks
from routing.dicom.netopts import client_tls
from routing.relay.outbound import BackendAddress

logger = logging.getLogger("synthiq.routing")

CANDIDATES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
    uid.HTJ2KLossless,
    uid.HTJ2K,
]


def probe_transfer_syntaxes(*, calling_ae: str, backend: BackendAddress, timeout: float = 10) -> frozenset[str] | None:
    """The transfer syntaxes a backend accepts for CT Image Storage; None if it cannot be asked."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    tls_args = (client_tls(backend.tls), backend.host) if backend.tls else None
    try:
        assoc = ae.associate(backend.host, backend.port, ae_title=backend.ae_title, tls_args=tls_args,
                             contexts=[build_context(CTImageStorage, ts) for ts in CANDIDATES])
    except Exception as exc:  # a probe must never stop the proxy from starting
        logger.warning("transfer-syntax probe of %s at %s:%d failed: %s", backend.id, backend.host, backend.port, exc)
        return None
    if not assoc.is_established:
        return None
    accepted = frozenset(str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts)
    assoc.release()
    return accepted


def probe_pool(*, pool_id: str, calling_ae: str, backends: list[BackendAddress]) -> dict[str, int]:
    """Per transfer syntax, how many of the pool's backends accept it."""
    ranks = syntax_ranks(probe_transfer_syntaxes(calling_ae=calling_ae, backend=b) for b in backends)
    logger.info("pool=%s transfer syntaxes accepted by its backends: %s", pool_id,
                {ts: n for ts, n in sorted(ranks.items())} or "unknown")
    return ranks
