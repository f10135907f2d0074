"""What the pool's backends accept, learned by asking them: transfer syntaxes, and which
of the non-storage services SynthIQ passes (Q/R, storage commitment) they offer.

Each backend is offered one storage class under every common transfer syntax (one per
presentation context), and each passed service class, and what it accepts is remembered. When a modality proposes
several syntaxes for a context, SynthIQ then prefers one the backends take
(``routing.dicom.negotiation.prefer_accepted``): a modality that favours JPEG 2000 in
front of a pool that only stores uncompressed data is steered to uncompressed at
association time instead of failing every C-STORE afterwards.

Then it learns how each backend chooses: every pair of the syntaxes it accepts is proposed
in both orders (one presentation context each). A backend that takes the same syntax both
ways chooses by a preference of its own (DCMTK-based PACS such as Orthanc take
uncompressed over the requestor's first choice); that syntax wins the pair. SynthIQ then
chooses for the modality as the pool's backends would, so a backend receives the same
encoding through SynthIQ as from a direct send (the interop matrix checks this twin by twin).

The probe is association negotiation only, on SynthIQ's DICOM client (``routing.dicom.scu``);
runproxy runs it before it starts serving.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from pydicom import uid

from routing.dicom import scu
from routing.dicom.negotiation import Rank, syntax_ranks
from routing.dicom.scu import Context, Peer
from routing.dicom.sop_classes import PASSED

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
    services: frozenset[str]  # passed service SOP classes accepted (routing.dicom.sop_classes.PASSED)
    wins: dict[str, int] = field(default_factory=dict)  # syntax -> pairs it won by the backend's own choice
    max_pdu: int = 0  # the largest PDU it takes, as its A-ASSOCIATE-AC says (0: no limit announced)


@dataclass(frozen=True)
class PoolAbilities:
    ranks: dict[str, Rank]  # transfer syntax -> (backends accepting it, pairwise choices it won)
    services: frozenset[str]  # service SOP classes at least one backend accepts
    max_pdu: int = 0  # the smallest PDU limit a backend announced (0: none did, or none was asked)


CONTEXTS_PER_ASSOCIATION = 128  # presentation context ids are the odd numbers 1..255
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class _Asker:
    """Associations to one backend, each proposing a list of presentation contexts."""

    def __init__(self, *, calling_ae: str, backend: Peer, timeout: float):
        self.calling_ae, self.backend, self.timeout = calling_ae, backend, timeout
        self.max_pdu = 0  # what the backend's last A-ASSOCIATE-AC announced

    def accepted(self, contexts: list[Context]) -> list[tuple[str, str]] | None:
        """Per proposed context, in proposal order: (abstract syntax, the transfer syntax
        accepted), or ("", "") when it was refused; None if the backend cannot be asked."""
        try:
            with scu.associate(self.backend, calling_ae=self.calling_ae, contexts=contexts, timeout=self.timeout,
                               require_context=False) as link:
                self.max_pdu = link.max_pdu
                # Context IDs are 1, 3, 5, ... in the order proposed.
                return [link.contexts.get(2 * n + 1, ("", "")) for n in range(len(contexts))]
        except scu.Unreachable as exc:  # a probe must never stop the proxy from starting
            # A backend that is down is the heartbeats' to report (once), not every probe's.
            logger.debug("probe of %s failed: %s", self.backend.id, exc)
            return None


def probe_backend(*, calling_ae: str, backend: Peer, timeout: float = 10) -> Abilities | None:
    """What a backend accepts, and how it chooses among syntaxes; None if it cannot be asked."""
    asker = _Asker(calling_ae=calling_ae, backend=backend, timeout=timeout)
    contexts: list[Context] = [(CT_IMAGE_STORAGE, [ts]) for ts in CANDIDATES]
    contexts += [(abstract, [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian]) for abstract in PASSED]
    accepted = asker.accepted(contexts)
    if accepted is None:
        return None
    syntaxes = frozenset(ts for abstract, ts in accepted if abstract == CT_IMAGE_STORAGE)
    return Abilities(syntaxes=syntaxes, services=frozenset(abstract for abstract, _ in accepted if abstract in PASSED),
                     wins=_pairwise_wins(asker, syntaxes), max_pdu=asker.max_pdu)


def _pairwise_wins(asker: _Asker, syntaxes: frozenset[str]) -> dict[str, int]:
    """Every pair of ``syntaxes`` proposed in both orders: the syntax the backend takes both
    ways wins the pair (a backend that takes the requestor's first choice gives no wins)."""
    pairs = [(a, b) for a in sorted(syntaxes) for b in sorted(syntaxes) if a != b]
    chosen: dict[tuple[str, str], str] = {}
    for start in range(0, len(pairs), CONTEXTS_PER_ASSOCIATION):
        batch = pairs[start:start + CONTEXTS_PER_ASSOCIATION]
        accepted = asker.accepted([(CT_IMAGE_STORAGE, list(pair)) for pair in batch])
        if accepted is None:
            return {}
        chosen.update({pair: ts for pair, (_, ts) in zip(batch, accepted, strict=True) if ts})
    wins: Counter[str] = Counter(ts for (a, b), ts in chosen.items() if a < b and chosen.get((b, a)) == ts)
    return dict(wins)


def pool_abilities(*, pool_id: str, found: list[Abilities | None]) -> PoolAbilities:
    """What the pool's backends accept, together (None: a backend that could not be asked)."""
    ranks = syntax_ranks((a.syntaxes, a.wins) if a else None for a in found)
    services = frozenset(s for a in found if a for s in a.services)
    max_pdu = min((a.max_pdu for a in found if a and a.max_pdu), default=0)
    logger.info("pool=%s transfer syntaxes accepted by its backends: %s; services: %s; smallest max PDU: %s",
                pool_id, {ts: rank for ts, rank in sorted(ranks.items())} or "unknown", sorted(services) or "none",
                max_pdu or "none announced")
    return PoolAbilities(ranks=ranks, services=services, max_pdu=max_pdu)
