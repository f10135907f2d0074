"""What the pool's backends accept, learned by asking them: transfer syntaxes, and which
of the non-storage services SynthIQ passes (Q/R, storage commitment) they offer.

Each backend is offered one storage class under every common transfer syntax (one per
presentation context), and each passed service class, and what it accepts is remembered. When a modality proposes
several syntaxes for a context, SynthIQ then prefers one the backends take
(``routing.dicom.negotiation.prefer_accepted``): a modality that favours JPEG 2000 in
front of a pool that only stores uncompressed data is steered to uncompressed at
association time instead of failing every C-STORE afterwards.

The probe is a plain SCU, so it uses pynetdicom's threaded AE; runproxy runs it before
it starts serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom import uid
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from routing.dicom.negotiation import syntax_ranks
from routing.dicom.netopts import client_tls
from routing.dicom.services import PASSED
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


@dataclass(frozen=True)
class Abilities:
    syntaxes: frozenset[str]  # transfer syntaxes accepted for CT Image Storage
    services: frozenset[str]  # passed service SOP classes accepted (routing.dicom.services.PASSED)


@dataclass(frozen=True)
class PoolAbilities:
    ranks: dict[str, int]  # transfer syntax -> how many backends accept it
    services: frozenset[str]  # service SOP classes at least one backend accepts


def probe_backend(*, calling_ae: str, backend: BackendAddress, timeout: float = 10) -> Abilities | None:
    """What a backend accepts; None if it cannot be asked."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    tls_args = (client_tls(backend.tls), backend.host) if backend.tls else None
    contexts = [build_context(CTImageStorage, ts) for ts in CANDIDATES]
    contexts += [build_context(abstract, [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian])
                 for abstract in PASSED]
    try:
        assoc = ae.associate(backend.host, backend.port, ae_title=backend.ae_title, tls_args=tls_args,
                             contexts=contexts)
    except Exception as exc:  # a probe must never stop the proxy from starting
        logger.warning("probe of %s at %s:%d failed: %s", backend.id, backend.host, backend.port, exc)
        return None
    if not assoc.is_established:
        return None
    accepted = assoc.accepted_contexts
    abilities = Abilities(
        syntaxes=frozenset(str(cx.transfer_syntax[0]) for cx in accepted if cx.abstract_syntax == CTImageStorage),
        services=frozenset(str(cx.abstract_syntax) for cx in accepted if cx.abstract_syntax in PASSED),
    )
    assoc.release()
    return abilities


def pool_abilities(*, pool_id: str, found: list[Abilities | None]) -> PoolAbilities:
    """What the pool's backends accept, together (None: a backend that could not be asked)."""
    ranks = syntax_ranks(a.syntaxes if a else None for a in found)
    services = frozenset(s for a in found if a for s in a.services)
    logger.info("pool=%s transfer syntaxes accepted by its backends: %s; services: %s", pool_id,
                {ts: n for ts, n in sorted(ranks.items())} or "unknown", sorted(services) or "none")
    return PoolAbilities(ranks=ranks, services=services)
