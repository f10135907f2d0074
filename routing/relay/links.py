"""One inbound association's associations to its backends, opened on demand and kept while in use.

A link is opened the first time an operation needs its backend, reused by the next one,
released once it sits idle (``Network.OutboundIdleSeconds``), and released or aborted with
the inbound association.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from routing.relay.outbound import BackendLink, OutboundUnavailable

if TYPE_CHECKING:
    from routing.relay.server import NetworkSettings

logger = logging.getLogger("synthiq.routing")


class Links:
    def __init__(self, *, open_link: Callable[[str], Awaitable[BackendLink]], network: NetworkSettings,
                 spawn: Callable[[Coroutine[Any, Any, Any]], object], where: str):
        self._open = open_link
        self._network = network
        self._spawn = spawn
        self.where = where  # the association's ids, for a log line
        self.by_backend: dict[str, BackendLink] = {}
        # Called with a link (claimed) whose backend sent a request of its own while idle.
        self.on_request: Callable[[BackendLink], object] | None = None

    async def to(self, backend_id: str, *, log: bool = True) -> BackendLink:
        """The link to ``backend_id``, opened when needed. Raises OutboundUnavailable
        (logged unless ``log`` is false: a hold's retries log once, not at every try)."""
        link = self.by_backend.get(backend_id)
        if link is None or not link.usable:
            self.by_backend.pop(backend_id, None)
            try:
                link = await self._open(backend_id)
            except OutboundUnavailable as exc:
                if log:
                    logger.error("%s backend=%s: %s", self.where, backend_id, exc.comment)
                raise
            link.on_request = self.on_request
            self.by_backend[backend_id] = link
        return link

    def drop(self, link: BackendLink) -> None:
        """Forget a link that went away (it is reopened when next needed)."""
        if self.by_backend.get(link.backend.id) is link:
            del self.by_backend[link.backend.id]

    def unclaim(self, link: BackendLink) -> None:
        """An operation is done with ``link``: kept for the next, released once idle; forgotten if gone."""
        if link.usable:
            link.unclaim(idle_seconds=self._network.outbound_idle_seconds, on_idle=self.idle)
        else:
            self.drop(link)

    def idle(self, link: BackendLink) -> None:
        self.drop(link)
        self._spawn(link.release(self._network.release_timeout_seconds))

    async def release_all(self) -> None:
        links, self.by_backend = list(self.by_backend.values()), {}
        if links:
            await asyncio.gather(*(link.release(self._network.release_timeout_seconds) for link in links))

    def abort_all(self) -> None:
        for link in list(self.by_backend.values()):
            link.abort()
        self.by_backend.clear()
