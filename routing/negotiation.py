"""Which transfer syntaxes the pool's backends accept, learned by asking them.

Each backend is offered one storage class under every common transfer syntax (one per
presentation context) and what it accepts is remembered. When a modality proposes
several syntaxes for a context, SynthIQ then prefers one the backends take: a modality
that favours JPEG 2000 in front of a pool that only stores uncompressed data is steered
to uncompressed at association time instead of failing every C-STORE afterwards.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from pydicom import uid
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

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


def probe_transfer_syntaxes(*, ae: AE, host: str, port: int, ae_title: str, tls_args=None) -> frozenset[str] | None:
    """The transfer syntaxes a backend accepts for CT Image Storage; None if it cannot be asked."""
    try:
        assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args,
                             contexts=[build_context(CTImageStorage, ts) for ts in CANDIDATES])
    except Exception as exc:  # a probe must never stop the proxy from starting
        logger.warning("transfer-syntax probe of %s:%d failed: %s", host, port, exc)
        return None
    if not assoc.is_established:
        return None
    accepted = frozenset(str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts)
    assoc.release()
    return accepted


def syntax_ranks(accepted_by_backend: Iterable[frozenset[str] | None]) -> dict[str, int]:
    """How many of the backends that answered accept each syntax."""
    return dict(Counter(ts for accepted in accepted_by_backend if accepted for ts in accepted))


def prefer_accepted(proposed: list[str], ranks: dict[str, int]) -> list[str]:
    """Reorder a context's proposed syntaxes: those most backends accept first, the
    requestor's own order kept among equals. Nothing is dropped, so a syntax no backend
    was seen to accept is still taken when it is all the requestor offers (the C-STORE
    then fails with a clear status if the chosen backend refuses it)."""
    if not ranks:
        return proposed
    return sorted(proposed, key=lambda ts: -ranks.get(str(ts), 0))
