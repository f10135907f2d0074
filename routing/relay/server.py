"""The relay: every pool's listener on one event loop, the front-door limits, and shutdown.

The listening sockets are bound by runproxy (once, in the parent when there are several
workers) and handed in. The front door is built so that a flood cannot starve real
modalities: connections that have not finished association negotiation are counted
apart from established associations, bounded in total and per source address, and
each has a deadline from connect to A-ASSOCIATE-AC (TLS handshake included); memory
per connection follows the bytes received, never the bytes announced.

Routing is delegated to ``placement`` (``routing.router.Router``): a hot cache hit is
answered inline; anything that may touch the database runs on the router's own thread
and is awaited, so the loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Protocol

from routing.dicom import negotiation, netopts
from routing.dicom.sop_classes import VERIFICATION
from routing.relay import handshake, locator
from routing.relay.commitment import CommitmentStore
from routing.relay.connection import PduConnection
from routing.relay.handlers import HANDLERS, Service
from routing.relay.inbound import InboundAssociation
from routing.relay.outbound import HANDSHAKE_PDU_LIMIT, BackendAddress, BackendLink
from routing.relay.quota import AddressCounts

logger = logging.getLogger("synthiq.routing")

# How often a refused connection is logged per reason (a flood must not flood the log).
REFUSAL_LOG_SECONDS = 60.0
ACCEPT_BATCH = 8  # connections taken per wake-up of a listening socket
ACCEPT_PAUSE_SECONDS = 1.0
# The smallest max PDU announced to modalities whatever the backends take: DCMTK's default,
# so one backend with tiny PDUs does not make every modality send tiny ones too.
MIN_ANNOUNCED_PDU = 16384
# On stopping, how long a modality whose last operation was let finish has to release.
RELEASE_WINDOW_SECONDS = 2.0


@dataclass(frozen=True)
class PoolOffer:
    """What the relay passes for a pool, as its backends' answers to the probes have it: the
    SOP classes besides storage, its transfer syntax ranks, the smallest PDU limit they announced."""

    pool_id: str
    ranks: Mapping[str, negotiation.Rank] = field(default_factory=dict)
    services: tuple[str, ...] = (VERIFICATION,)
    backend_max_pdu: int = 0  # 0: none known (see Relay.announced_max_pdu)


@dataclass(frozen=True)
class PoolListener:
    id: str
    ae_title: str
    host: str
    port: int
    allowed_calling_ae_titles: tuple[str, ...] = ()
    tls: ssl.SSLContext | None = None
    allowed_sources: tuple[IPv4Network | IPv6Network, ...] = ()
    accepted_called_ae_titles: tuple[str, ...] = ()
    # (AE title, backend id) of each backend: an archive reporting storage commitment to a
    # backend calls that backend's own title at SynthIQ's address.
    backend_ae_titles: tuple[tuple[str, str], ...] = ()
    # CommitmentRequesters: AE title -> (host, port), where SynthIQ's own reports go.
    commitment_requesters: tuple[tuple[str, str, int], ...] = ()

    def answers_to(self, called_ae: str) -> bool:
        """Whether an association calling ``called_ae`` is this pool's: AeTitle,
        AcceptedCalledAeTitles ("*" there accepts any), a backend's own AE title (reports
        from an archive to that backend) or a commitment requester's (a backend's report
        for it, which SynthIQ passes on)."""
        return (called_ae == self.ae_title or called_ae in self.accepted_called_ae_titles
                or "*" in self.accepted_called_ae_titles or any(called_ae == ae for ae, _ in self.backend_ae_titles)
                or self.requester(called_ae) is not None)

    def backend_called(self, called_ae: str) -> str | None:
        """The backend whose own AE title ``called_ae`` is, when exactly one backend has it
        (nodes sharing a cluster title are the pool's, not one node's)."""
        ids = [backend_id for ae, backend_id in self.backend_ae_titles if ae == called_ae]
        return ids[0] if len(ids) == 1 and called_ae != self.ae_title else None

    def requester(self, ae_title: str) -> tuple[str, int] | None:
        """Where the commitment requester ``ae_title`` takes reports (CommitmentRequesters)."""
        return next(((host, port) for ae, host, port in self.commitment_requesters if ae == ae_title), None)

    def admits(self, address: str) -> bool:
        """Whether a connection from ``address`` may talk to this pool (AllowedSources)."""
        if not self.allowed_sources:
            return True
        try:
            ip = ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d
        return any(ip in network for network in self.allowed_sources)


@dataclass(frozen=True)
class NetworkSettings:
    """Timeouts and limits of the DICOM side (pools.config.NetworkConfig holds the
    defaults and what each means)."""

    acse_timeout_seconds: float
    dimse_timeout_seconds: float
    network_timeout_seconds: float
    connect_timeout_seconds: float
    max_associations: int
    max_associations_per_address: int | None
    idle_timeout_seconds: float
    max_pdu_bytes: int
    handshake_timeout_seconds: float
    max_pending_associations: int
    max_pending_per_address: int
    release_timeout_seconds: float
    outbound_idle_seconds: float
    header_hold_bytes: int
    bound_backend_hold_seconds: float
    max_held_associations: int


class Route(Protocol):
    backend_id: str | None
    reason: str
    cache_hit: bool


class TelemetrySink(Protocol):
    """What the relay and the DICOMweb front door report (``routing.telemetry.Telemetry``;
    the counter names it keeps are ``routing.counters``). Called on the event loop: cheap."""

    audit: Any  # routing.audit's trail: the relay reports audit events through it

    def association_opened(self) -> None: ...
    def association_closed(self) -> None: ...
    def association_rejected(self, reason: str, *, pool_id: str = "", source_ip: str = "", calling_ae: str = "",
                             called_ae: str = "", detail: str = "") -> None: ...
    def contexts_refused(self, *, pool_id: str, source_ip: str, calling_ae: str, called_ae: str,
                         sop_classes: list[str]) -> None: ...
    def connection_refused(self) -> None: ...
    def held(self) -> None: ...
    def routed(self, reason: str) -> None: ...
    def decided(self, *, pool_id: str, study_uid: str, backend_id: str, reason: str, calling_ae: str,
                source_ip: str, modality: str) -> None: ...
    def forwarded(self, backend_id: str, status: int, seconds: float, *, nbytes: int = 0) -> None: ...
    def forward_failed(self, backend_id: str | None, status: int) -> None: ...
    def store_failed(self, *, pool_id: str, calling_ae: str, source_ip: str, study_uid: str, sop_instance_uid: str,
                     backend_id: str | None, status: int, comment: str, by_backend: bool,
                     service: str = "C-STORE") -> None: ...
    def operation(self, *, service: str, status: int) -> None: ...
    def invalid_input(self, *, service: str, reason: str) -> None: ...
    def backend_violation(self, backend_id: str) -> None: ...


class Placement(Protocol):
    """What the relay needs of routing (``routing.router.Router``). ``submit*`` return
    concurrent futures answered on the router's thread; ``instance_backends`` blocks."""

    def route_cached(self, *, pool_id: str, study_uid: str) -> Route | None: ...
    def submit(self, *, pool_id: str, study_uid: str) -> Any: ...
    def submit_lookup(self, *, pool_id: str, study_uid: str) -> Any: ...
    def note_sent(self, backend_id: str) -> None: ...
    def touch(self, pool_id: str, study_uid: str) -> None: ...
    def note_instance(self, *, pool_id: str, sop_instance_uid: str, backend_id: str, study_uid: str) -> None: ...
    def instance_backends(self, *, pool_id: str, sop_instance_uids: list[str]) -> dict[str, str]: ...
    def healthy_backends(self, pool_id: str) -> list[str]: ...
    def unhealthy_backends(self, pool_id: str) -> list[str]: ...
    def address(self, backend_id: str) -> BackendAddress: ...


@dataclass
class _Pending:
    """Connections accepted but not yet associated, oldest first, and per source address."""

    order: dict[InboundAssociation | handshake.Handshake, None] = field(default_factory=dict)
    by_address: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return len(self.order)

    def add(self, assoc: InboundAssociation | handshake.Handshake) -> None:
        self.order[assoc] = None
        self.by_address[assoc.source_ip] += 1

    def remove(self, assoc: InboundAssociation | handshake.Handshake) -> bool:
        if assoc not in self.order:
            return False
        del self.order[assoc]
        self.by_address[assoc.source_ip] -= 1
        if self.by_address[assoc.source_ip] <= 0:
            del self.by_address[assoc.source_ip]
        return True


class Relay:
    def __init__(self, *, pools: list[PoolListener], network: NetworkSettings, placement: Placement,
                 telemetry: TelemetrySink, offers: Mapping[str, PoolOffer] | None = None,
                 log_patient_id: bool = True, per_address: AddressCounts | None = None,
                 commitments: CommitmentStore | None = None, handlers: Mapping[int, Service] = HANDLERS):
        self.pools = pools
        self.handlers = handlers  # DIMSE command field -> its service's handler (routing.relay.handlers)
        self.log_patient_id = log_patient_id  # route lines carry the Patient ID unless a site turns it off
        self.network = network
        self.placement = placement
        self.telemetry = telemetry
        self.commitments = commitments  # storage commitment transactions, shared by the processes
        # What each pool passes (runproxy's refresh replaces an offer when a backend comes back).
        self.offers = {pool.id: PoolOffer(pool.id) for pool in pools} | dict(offers or {})
        self._listening: dict[str, socket.socket] = {}
        self.associations: set[InboundAssociation] = set()
        self._established: set[InboundAssociation] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending = _Pending()
        self._refusals_logged: dict[str, tuple[float, int]] = {}  # kind -> (last logged, since unlogged)
        self._client_tls: dict[netopts.ClientTls, ssl.SSLContext] = {}
        self.stopping = False
        self.accepting = False
        self._idle = asyncio.Event()
        self.held: Counter[str] = Counter()  # pool -> associations waiting for an unreachable backend
        # Established associations per source address, across the workers (see quota).
        self.per_address = per_address or AddressCounts()

    # -- listening ------------------------------------------------------------------------
    async def start(self, sockets: Mapping[str, socket.socket]) -> None:
        """Accept on the pools' listening sockets. Accepting is done here rather than by
        ``loop.create_server`` because asyncio's server accepts every waiting connection
        in one go: with several workers on one socket, the first to wake would take a
        whole burst. A few per wake-up spreads a burst over the workers."""
        for pool in self.pools:
            self._listen(pool, sockets[pool.id])
        self.accepting = True

    def _listen(self, pool: PoolListener, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._listening[pool.id] = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, pool, sock)
        logger.info("listening pool=%s ae=%s on %s:%d%s", pool.id, pool.ae_title, pool.host, pool.port,
                    " (TLS)" if pool.tls else "")

    # -- a reload (SIGHUP) changes the pools; associations already open keep what they had --
    def add_pool(self, pool: PoolListener, sock: socket.socket, offer: PoolOffer) -> None:
        self.pools = [*self.pools, pool]
        self.offers[pool.id] = offer
        self._listen(pool, sock)

    def update_pool(self, pool: PoolListener, offer: PoolOffer) -> None:
        """Same address, new settings (AE title, allow-list, TLS, services): connections
        accepted from now on get them."""
        sock = self._listening[pool.id]
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), self._accept, pool, sock)
        self.pools = [pool if p.id == pool.id else p for p in self.pools]
        self.offers[pool.id] = offer

    def remove_pool(self, pool_id: str) -> None:
        """The listener closes now; the pool's open associations go on until they end."""
        sock = self._listening.pop(pool_id, None)
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        self.pools = [p for p in self.pools if p.id != pool_id]
        still = sum(1 for a in self.associations if a.pool_id == pool_id)
        logger.warning("pool=%s removed: its listener is closed; %d open association(s) of it go on until they end",
                       pool_id, still)

    def _accept(self, pool: PoolListener, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of file descriptors or memory: stop accepting for a moment (the
                    # backlog holds new connections) rather than spin on the error.
                    self.log_refusal("resources", f"pool={pool.id}: cannot accept ({exc.strerror}); "
                                      f"pausing accepts for {ACCEPT_PAUSE_SECONDS:.0f}s")
                    loop.remove_reader(sock.fileno())
                    loop.call_later(ACCEPT_PAUSE_SECONDS, self._resume_accepting, pool, sock)
                    return
                logger.warning("pool=%s: accept failed: %s", pool.id, exc)
                return
            conn.setblocking(False)
            self.spawn(self._adopt(pool, conn))

    def _resume_accepting(self, pool: PoolListener, sock: socket.socket) -> None:
        if not self.stopping and self._listening.get(pool.id) is sock:
            current = next((p for p in self.pools if p.id == pool.id), pool)  # a reload may have changed it
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, current, sock)

    async def _adopt(self, pool: PoolListener, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.network.handshake_timeout_seconds  # connect to A-ASSOCIATE-AC
        if pool.tls is None:
            try:
                await loop.connect_accepted_socket(lambda: self._connection(pool, deadline), conn)
            except OSError as exc:  # gone before it could be set up
                logger.debug("pool=%s: accepted connection lost at once: %s", pool.id, exc)
                conn.close()
            return
        try:
            address = str(conn.getpeername()[0])
        except OSError:
            conn.close()
            return
        task = asyncio.current_task()
        assert task is not None
        if not self._admit(pool, address):
            conn.close()
            return
        shaking = handshake.Handshake(address, task)
        self._pending.add(shaking)
        try:
            await loop.connect_accepted_socket(lambda: self._connection(pool, deadline, shaking), conn, ssl=pool.tls,
                                               ssl_handshake_timeout=max(0.1, deadline - loop.time()))
        except (OSError, TimeoutError) as exc:
            handshake.failed(self, pool_id=pool.id, pool_ae=pool.ae_title, address=address, exc=exc)
            conn.close()
        except asyncio.CancelledError:  # evicted by a newer connection, or runproxy is stopping
            conn.close()
        finally:
            self._pending.remove(shaking)

    def _connection(self, pool: PoolListener, deadline: float, shaking: handshake.Handshake | None = None,
                    ) -> PduConnection:
        return PduConnection(name=f"pool {pool.id} inbound", max_length=HANDSHAKE_PDU_LIMIT,
                             max_pdata_length=self.network.max_pdu_bytes,
                             read_limit=max(2 * self.network.max_pdu_bytes, 1 << 20),
                             on_open=lambda conn: self._opened(pool, conn, deadline, shaking))

    def _opened(self, pool: PoolListener, conn: PduConnection, deadline: float,
                shaking: handshake.Handshake | None) -> None:
        """A connection is ready to negotiate: plain TCP just accepted (admitted now), or TLS
        with its handshake done (admitted at the accept; it takes its Handshake's place)."""
        if shaking is not None:
            self._pending.remove(shaking)  # admitted at the accept
            refused = self.stopping
        else:
            refused = not self._admit(pool, conn.peer[0])
        if refused:
            conn.abort_transport()
            return
        assoc = InboundAssociation(self, pool, conn)
        self._pending.add(assoc)
        self.associations.add(assoc)
        task = self.spawn(assoc.run(deadline))
        assoc.task = task
        task.add_done_callback(lambda _: self._ended(assoc))

    def _admit(self, pool: PoolListener, address: str) -> bool:
        """Whether a new connection may join the pending ones (the caller adds it). When the
        pending total is full, the oldest connection still negotiating makes room: a real
        modality negotiates in milliseconds, so what has been silent longest is what a flood
        left behind, and a new caller always gets its chance."""
        pending = self._pending
        kind = why = ""
        if self.stopping:
            kind = why = "stopping"
        elif not pool.admits(address):
            kind, why = "source-address", f"{address} is not in Pools[{pool.id}].AllowedSources"
            self.telemetry.association_rejected(kind, pool_id=pool.id, source_ip=address, detail=why)
            self.telemetry.audit.association_rejected(reason=kind, address=address, pool_ae=pool.ae_title, text=why)
        elif pending.by_address[address] >= self.network.max_pending_per_address:
            kind, why = f"pending {address}", (f"{pending.by_address[address]} connections from {address} still "
                                               "negotiating (Network.MaxPendingPerAddress)")
        if why:
            self.log_refusal(kind, f"pool={pool.id} source_ip={address}: connection refused: {why} "
                                    f"(repeats within {REFUSAL_LOG_SECONDS:.0f}s counted, not logged)")
            self.telemetry.connection_refused()
            return False
        if pending.total >= self.network.max_pending_associations:
            oldest = next(iter(pending.order))
            pending.remove(oldest)
            self.log_refusal("evicted", f"pool={pool.id}: {pending.total + 1} connections still negotiating "
                                         f"(Network.MaxPendingAssociations): the oldest, from {oldest.source_ip}, "
                                         f"closed to make room (repeats within {REFUSAL_LOG_SECONDS:.0f}s counted, "
                                         "not logged)")
            self.telemetry.connection_refused()
            oldest.drop()
        return True

    def log_refusal(self, kind: str, line: str) -> None:
        """A refusal of kind ``kind``: logged, then at most once per REFUSAL_LOG_SECONDS, saying
        how many went unlogged meanwhile (a flood is a few lines, each counted in telemetry)."""
        now = time.monotonic()
        said_at, unsaid = self._refusals_logged.get(kind, (-REFUSAL_LOG_SECONDS, 0))
        if now - said_at < REFUSAL_LOG_SECONDS:
            self._refusals_logged[kind] = (said_at, unsaid + 1)
            return
        self._refusals_logged[kind] = (now, 0)
        logger.warning("%s%s", line, f" ({unsaid} more like it in the last {now - said_at:.0f}s)" if unsaid else "")

    def established(self, assoc: InboundAssociation) -> None:
        """``assoc`` finished negotiation: it leaves the pending count for the established one."""
        self._pending.remove(assoc)
        self._established.add(assoc)
        self.per_address.add(assoc.source_ip, +1)

    def _ended(self, assoc: InboundAssociation) -> None:
        self.associations.discard(assoc)
        if assoc in self._established:
            self._established.discard(assoc)
            self.per_address.add(assoc.source_ip, -1)
        self._pending.remove(assoc)
        self.operation_done()

    def announced_max_pdu(self, pool_id: str) -> int:
        """The largest PDU a modality may send to this pool: Network.MaxPduBytes, but no more
        than its backends take (never below MIN_ANNOUNCED_PDU). A modality's PDU that fits the
        backend is relayed whole, as it came; a larger one is cut and framed again, a copy of
        every byte in user space (DCMTK's storescp takes 128 KiB at most, SynthIQ's default is 256)."""
        backends = self.offers[pool_id].backend_max_pdu
        if not backends:
            return self.network.max_pdu_bytes
        return min(self.network.max_pdu_bytes, max(backends, MIN_ANNOUNCED_PDU))

    def has_room(self) -> bool:
        return len(self._established) < self.network.max_associations

    @property
    def max_per_address(self) -> int:
        """Network.MaxAssociationsPerAddress, or a quarter of MaxAssociations when unset."""
        return self.network.max_associations_per_address or max(1, self.network.max_associations // 4)

    def address_has_room(self, address: str) -> bool:
        return self.per_address.total(address) < self.max_per_address

    @property
    def open_associations(self) -> int:
        return len(self._established)

    @property
    def pending_connections(self) -> int:
        return self._pending.total

    # -- work the associations hand over ------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the relay keeps (and awaits on shutdown)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def route(self, pool_id: str, study_uid: str) -> Route:
        route = self.placement.route_cached(pool_id=pool_id, study_uid=study_uid)
        if route is not None:
            return route
        return await asyncio.wrap_future(self.placement.submit(pool_id=pool_id, study_uid=study_uid))

    async def bound_backend(self, pool_id: str, study_uid: str) -> str | None:
        """The backend a study is bound to, if any (never binds it)."""
        found: str | None = await asyncio.wrap_future(self.placement.submit_lookup(pool_id=pool_id,
                                                                                   study_uid=study_uid))
        return found

    async def instance_backends(self, pool_id: str, sop_instance_uids: list[str]) -> dict[str, str]:
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.placement.instance_backends(pool_id=pool_id, sop_instance_uids=sop_instance_uids))

    async def locate(self, pool_id: str, *, calling_ae: str, study_uid: str,
                     patient_id: str) -> tuple[list[str], list[str]]:
        """Which healthy backends hold the study (or the patient): (holders, silent ones)."""
        backends = [self.placement.address(b) for b in self.placement.healthy_backends(pool_id)]
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: locator.locate(backends, calling_ae=calling_ae, study_uid=study_uid, patient_id=patient_id,
                                         timeout=self.network.acse_timeout_seconds))

    async def locate_instances(self, pool_id: str, *, calling_ae: str, sop_uids: list[str]) -> dict[str, str]:
        """Which healthy backend holds each of ``sop_uids`` (those found)."""
        backends = [self.placement.address(b) for b in self.placement.healthy_backends(pool_id)]
        where, _ = await asyncio.get_running_loop().run_in_executor(
            None, lambda: locator.locate_instances(backends, sop_uids, calling_ae=calling_ae,
                                                   timeout=self.network.acse_timeout_seconds))
        return where

    async def open_link(self, assoc: InboundAssociation, backend_id: str) -> BackendLink:
        backend = self.placement.address(backend_id)
        assert assoc.rq is not None
        request = negotiation.outbound_request(assoc.rq, assoc.contexts, called_ae=backend.ae_title,
                                               max_pdu=self.network.max_pdu_bytes)
        tls = None
        if backend.tls:
            tls = self._client_tls.get(backend.tls)
            if tls is None:
                tls = self._client_tls[backend.tls] = netopts.client_tls(backend.tls)
        network = self.network
        return await BackendLink.open(backend, request, connect_timeout=network.connect_timeout_seconds,
                                      acse_timeout=network.acse_timeout_seconds, max_pdu=network.max_pdu_bytes, tls=tls)

    def operation_done(self) -> None:
        if self.stopping and not any(a.busy for a in self.associations):
            self._idle.set()

    # -- stopping -------------------------------------------------------------------------
    async def stop(self, *, grace_seconds: float) -> None:
        """Stop accepting; let operations in flight finish (bounded); then release every
        backend association and end the inbound ones."""
        self.stopping = True
        self.accepting = False
        loop = asyncio.get_running_loop()
        for sock in self._listening.values():
            loop.remove_reader(sock.fileno())
            sock.close()
        for entry in list(self._pending.order):
            if isinstance(entry, handshake.Handshake):
                entry.drop()
        finishing = [a for a in self.associations if a.busy]
        busy = len(finishing)
        if busy:
            logger.info("waiting up to %.0fs for %d operation(s) in flight", grace_seconds, busy)
            self.operation_done()
            try:
                await asyncio.wait_for(self._idle.wait(), grace_seconds)
            except TimeoutError:
                logger.warning("stopping with %d operation(s) still in flight: their associations are aborted",
                               sum(1 for a in self.associations if a.busy))
        # A modality whose operation was let finish usually releases right after the response:
        # it gets a moment to, as an abort on the heels of a response can cost a sender the
        # response itself. The rest are ended now.
        releasing = {a.task for a in finishing if a.task is not None and not a.task.done() and not a.busy}
        if releasing:
            await asyncio.wait(releasing, timeout=RELEASE_WINDOW_SECONDS)
        for assoc in list(self.associations):
            if assoc.task is not None:
                assoc.task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.network.release_timeout_seconds + 1)
