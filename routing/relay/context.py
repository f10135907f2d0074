"""What a DIMSE service handler is given: a narrow view of one inbound association.

The modality to read the request from and answer on, the association's links to the
backends, the relay's services (routing, locating, telemetry), the settings and the ids a
log line carries. Not the association itself: a handler cannot negotiate, release or
abort it, nor reach another handler's state. The audit trail keys an association's
transfers by this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pynetdicom.presentation import PresentationContext

from routing.relay.links import Links
from routing.relay.peer import ModalityPeer

if TYPE_CHECKING:
    from routing.relay.operations import Operations
    from routing.relay.server import NetworkSettings, PoolListener, Relay


@dataclass
class Tally:
    """What one association did, for its closing log line."""

    rx: int = 0
    fwd: int = 0
    failed: int = 0
    cache_hits: int = 0
    bytes_relayed: int = 0  # data set bytes sent to backends (telemetry's MB/s)
    studies: dict[str, str] = field(default_factory=dict)  # study uid -> backend, for this association


@dataclass(eq=False)  # compared (and hashed, by the audit trail) by identity
class Context:
    peer: ModalityPeer
    links: Links
    relay: Relay
    network: NetworkSettings
    listener: PoolListener
    contexts: dict[int, PresentationContext]
    calling_ae: str
    called_ae: str
    source_ip: str
    # A backend's own AE title called (an archive reporting to it): that backend.
    called_backend: str | None
    tally: Tally = field(default_factory=Tally)
    operations: Operations = field(init=False)  # set right after (it is given this context)

    @property
    def pool_id(self) -> str:
        return self.listener.id

    def transfer_syntax(self, context_id: int) -> str:
        return str(self.contexts[context_id].transfer_syntax[0])

    async def answer(self, context_id: int, raw: bytes | memoryview) -> None:
        """A response of SynthIQ's (or a backend's, already whole) to the modality."""
        await self.peer.answer(context_id, raw)

    async def drop_data_set(self, context_id: int) -> None:
        """Read and drop the rest of the request's data set (answered only once all is read)."""
        await self.peer.stream.skip_data_set(context_id, self.network.network_timeout_seconds)
