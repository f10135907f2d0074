"""runproxy's listening sockets and what a listener is told about its pool: bound once per
host by the supervisor (or again on a reload that adds or moves a pool), inherited or handed
to the workers."""

from __future__ import annotations

import socket
import ssl
from typing import Any

from pools.config import Config, PoolConfig, TlsConfig
from routing.dicom import netopts
from routing.dicomweb.context import WebBackend, WebPool
from routing.relay.server import PoolListener


class StartupError(Exception):
    """runproxy cannot start (or a reload cannot bind): one line that names the culprit."""


def bind_listener(pool: PoolConfig, *, dicom_web: bool = False) -> socket.socket:
    """The pool's listening socket (or its DICOMweb one), bound without SO_REUSEPORT: a
    port that another process (a stale runproxy, a PACS) holds is an error here, never a
    silent share."""
    host, port = (pool.dicom_web_host, pool.dicom_web.port) if dicom_web and pool.dicom_web else (pool.host, pool.port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; not REUSEPORT
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        what = "DICOMweb: " if dicom_web else ""
        raise StartupError(f"pool {pool.id}: {what}cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def server_tls(tls: TlsConfig) -> ssl.SSLContext:
    if not (tls.certificate and tls.key):
        raise StartupError("a pool's Tls needs Certificate and Key")
    return netopts.server_tls(certificate=tls.certificate, key=tls.key, ca=tls.ca,
                              require_client_certificate=tls.require_client_certificate)


def pool_listener(pool: PoolConfig) -> PoolListener:
    """The relay's view of a pool's DICOM listener (what it passes is the pool's PoolOffer)."""
    return PoolListener(pool.id, pool.ae_title, pool.host, pool.port, pool.allowed_calling_ae_titles,
                        server_tls(pool.tls) if pool.tls else None,
                        allowed_sources=pool.allowed_sources,
                        accepted_called_ae_titles=pool.accepted_called_ae_titles,
                        backend_ae_titles=tuple((b.ae_title, b.id) for b in pool.backends if b.enabled),
                        commitment_requesters=tuple((r.ae_title, r.host, r.port)
                                                    for r in pool.commitment_requesters))


def web_pool(pool: PoolConfig) -> WebPool:
    """The DICOMweb front door's view of a pool with DicomWeb (the config requires a URL per backend)."""
    assert pool.dicom_web is not None
    return WebPool(pool.id, pool.dicom_web_host, pool.dicom_web.port, pool.dicom_web.base_path,
                   tuple(WebBackend(b.id, (b.dicom_web_url or "").rstrip("/"), b.dicom_web_username,
                                    b.dicom_web_password) for b in pool.backends if b.enabled),
                   tls=server_tls(pool.dicom_web.tls) if pool.dicom_web.tls else None,
                   max_body_bytes=pool.dicom_web.max_body_bytes)


def close_listeners_gone(sockets: dict[str, socket.socket], *, old: Config, new: Config) -> None:
    """Close the listening sockets of pools a reload removed or moved, so their ports
    are freed once the workers close theirs too."""
    was = {p.id: (p.host, p.port) for p in old.pools}
    kept = {p.id: (p.host, p.port) for p in new.pools}
    for pool_id in [pool_id for pool_id in sockets if kept.get(pool_id) != was.get(pool_id)]:
        sockets.pop(pool_id).close()


def web_address(pool: PoolConfig) -> tuple[str, int] | None:
    """Where the pool's DICOMweb listener listens (None: the pool has none)."""
    return (pool.dicom_web_host, pool.dicom_web.port) if pool.dicom_web else None


def web_moved(*, old: Config, new: Config) -> list[str]:
    """Pools whose DICOMweb listener a reload added, moved or removed (a new socket, or none)."""
    was, now = ({p.id: web_address(p) for p in config.pools} for config in (old, new))
    return sorted(pool_id for pool_id in was.keys() | now.keys() if was.get(pool_id) != now.get(pool_id))


def dicom_web_changed(*, old: Config, new: Config) -> list[str]:
    """Pools whose DICOMweb settings (the front door, or a backend's URL or credentials) a
    reload changed: each worker serves them anew (``Worker._apply_dicom_web``)."""
    def view(config: Config) -> dict[str, tuple[Any, ...]]:
        return {p.id: (p.dicom_web, p.dicom_web_host, tuple(
            (b.id, b.enabled, b.dicom_web_url, b.dicom_web_username, b.dicom_web_password) for b in p.backends))
            for p in config.pools}

    with_dicom_web = {p.id for config in (old, new) for p in config.pools if p.dicom_web}
    before, after = view(old), view(new)
    return sorted(pool_id for pool_id in with_dicom_web if before.get(pool_id) != after.get(pool_id))
