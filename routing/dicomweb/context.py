"""What every DICOMweb handler is given: the pool's settings, the relay it shares the
placement (the study bindings) and counters with, the HTTP client, and how a request's
own headers become a backend's."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from routing.relay.server import NetworkSettings, Relay

logger = logging.getLogger("synthiq.routing")

# A client's Host header goes into the Forwarded header backends build URLs from: only a
# host name or address and a port pass (anything else is a header injection attempt).
_HOST = re.compile(r"^[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")
# Headers of a client's request passed on to a backend (besides Authorization, decided apart).
PASSED_REQUEST_HEADERS = ("Accept", "Accept-Charset", "Content-Type")
# Headers of a backend's response passed back (hop-by-hop ones and cookies never are).
PASSED_RESPONSE_HEADERS = ("Content-Type", "Content-Location", "Warning", "Content-Encoding", "Content-Language")

# The request key under which the authenticated client's user name is kept.
USER = "synthiq.user"
# (the client's Authorization header, the client's address) -> the user name, or None. Blocking
# (it reads the database): always called on the executor.
CredentialCheck = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class WebBackend:
    id: str
    url: str  # the backend's DICOMweb base URL, no trailing slash
    username: str | None = None
    password: str | None = None

    def authorization(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    @property
    def root(self) -> str:
        return urlsplit(self.url).path


@dataclass(frozen=True)
class WebPool:
    id: str
    host: str
    port: int
    base_path: str
    backends: tuple[WebBackend, ...]
    tls: ssl.SSLContext | None = None
    max_body_bytes: int = 8 << 30

    @property
    def requires_auth(self) -> bool:
        """With stored credentials SynthIQ opens the backends to whoever it lets in: so it
        lets in only its own users."""
        return any(b.authorization() is not None for b in self.backends)

    def backend(self, backend_id: str) -> WebBackend | None:
        return next((b for b in self.backends if b.id == backend_id), None)


@dataclass
class Context:
    pool: WebPool
    relay: Relay
    session: aiohttp.ClientSession
    network: NetworkSettings
    executor: Executor
    check: CredentialCheck | None = None

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(sock_connect=self.network.connect_timeout_seconds,
                                     sock_read=self.network.network_timeout_seconds)

    def headers(self, request: web.Request, backend: WebBackend, *, body: bool = False) -> dict[str, str]:
        """A backend's request headers: the client's content negotiation, the credentials
        (the backend's stored ones, else the client's own), and Forwarded, from which the
        backend builds the URLs it returns (so they are SynthIQ's)."""
        out = {name: request.headers[name] for name in PASSED_REQUEST_HEADERS
               if name in request.headers and (body or name != "Content-Type")}
        authorization = backend.authorization()
        if authorization is None and not self.pool.requires_auth:
            authorization = request.headers.get("Authorization")
        if authorization:
            out["Authorization"] = authorization
        host = request.headers.get("Host", "")
        if not _HOST.match(host):
            host = f"{self.pool.host}:{self.pool.port}"
        # Unquoted although a port makes RFC 7239 ask for quotes: Orthanc's plugin (1.7) copies
        # the quotes into its URLs. _HOST lets no separator through.
        out["Forwarded"] = f"host={host};proto={'https' if self.pool.tls else 'http'}"
        return out

    def client_base(self, request: web.Request) -> str:
        """SynthIQ's base URL as the client reached it (for rewriting backends' URLs)."""
        host = request.headers.get("Host", "")
        if not _HOST.match(host):
            host = f"{self.pool.host}:{self.pool.port}"
        return f"{'https' if self.pool.tls else 'http'}://{host}"

    async def run_blocking(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


async def read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """A body to its end, or its first ``limit + 1`` bytes when it is longer. (aiohttp's
    ``read(n)`` returns what has arrived, which for a body of several TCP segments is only
    its beginning.)"""
    body = bytearray()
    while len(body) <= limit:
        chunk = await stream.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def client_user(request: web.Request) -> str:
    """The user name the client authenticated as to SynthIQ, or "" (not asked to)."""
    return str(request.get(USER, ""))


def source_ip(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "-"
