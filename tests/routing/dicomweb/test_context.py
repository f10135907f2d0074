"""What a backend's request carries: whose credentials, and a Forwarded header no client can forge."""

from __future__ import annotations

import base64

from aiohttp.test_utils import make_mocked_request

from routing.dicomweb.context import Context, WebBackend, WebPool

OPEN = WebBackend("node-a", "http://10.0.0.1:8042/dicom-web")
STORED = WebBackend("node-b", "http://10.0.0.2:8042/dicom-web", "synthiq", "s3cret")


def _headers(pool: WebPool, backend: WebBackend, **request_headers: str) -> dict[str, str]:
    ctx = Context(pool, relay=None, session=None, network=None, executor=None)  # type: ignore[arg-type]
    return ctx.headers(make_mocked_request("GET", "/dicom-web/studies", headers=request_headers), backend)


def test_without_stored_credentials_the_clients_authorization_passes_through():
    pool = WebPool("main", "10.0.0.9", 8080, "/dicom-web", (OPEN,))
    assert not pool.requires_auth
    out = _headers(pool, OPEN, Authorization="Bearer abc", Accept="application/dicom+json", Cookie="x=1")
    assert out["Authorization"] == "Bearer abc" and out["Accept"] == "application/dicom+json" and "Cookie" not in out


def test_with_stored_credentials_the_backend_gets_them_and_never_the_clients_own():
    pool = WebPool("main", "10.0.0.9", 8080, "/dicom-web", (OPEN, STORED))
    assert pool.requires_auth
    out = _headers(pool, STORED, Authorization="Token the-clients-synthiq-token")
    assert out["Authorization"] == "Basic " + base64.b64encode(b"synthiq:s3cret").decode()
    assert "Authorization" not in _headers(pool, OPEN, Authorization="Token the-clients-synthiq-token")


def test_forwarded_names_the_clients_host_unless_it_is_not_a_host():
    pool = WebPool("main", "10.0.0.9", 8080, "/dicom-web", (OPEN,))
    assert _headers(pool, OPEN, Host="pacs.example:8080")["Forwarded"] == "host=pacs.example:8080;proto=http"
    forged = _headers(pool, OPEN, Host="evil.example;proto=https,for=1.2.3.4")["Forwarded"]
    assert forged == "host=10.0.0.9:8080;proto=http"
