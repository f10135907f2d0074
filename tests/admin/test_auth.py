"""Everything but /healthz and /metrics needs a login or a token (the WSGI app in process)."""

from __future__ import annotations

import pytest

from tests.admin.support import api_user

PROTECTED_GET = [
    "/api/status", "/api/pools", "/api/affinity", "/api/affinity?search=1.2", "/api/activity",
    "/api/affinity/1.2.3/commitment", "/api/schema",
]
PROTECTED_POST = [
    "/api/backends/node-a/drain", "/api/backends/node-a/enable", "/api/affinity/1.2.3/commitment",
]


@pytest.fixture
def client(db):
    from django.test import Client

    return Client(HTTP_HOST="127.0.0.1")


def test_unauthenticated_requests_are_refused_everywhere_but_healthz_and_metrics(client):
    for url in PROTECTED_GET:
        assert client.get(url).status_code in (401, 403), url
        assert client.get(url, HTTP_AUTHORIZATION="Token not-a-real-token").status_code in (401, 403), url
    for url in PROTECTED_POST:
        assert client.post(url).status_code in (401, 403), url
    page = client.get("/")
    assert page.status_code == 302 and page["Location"] == "/admin/login/?next=/"
    admin = client.get("/admin/affinity/binding/")
    assert admin.status_code == 302 and admin["Location"].startswith("/admin/login/")

    assert client.get("/healthz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics["Content-Type"].startswith("text/plain")


def test_a_token_or_a_login_opens_the_api_and_the_dashboard(client):
    user = api_user()
    for url in PROTECTED_GET:
        assert client.get(url, HTTP_AUTHORIZATION=f"Token {user.token}").status_code in (200, 404), url
    assert client.login(username=user.username, password=user.password)
    page = client.get("/")
    assert page.status_code == 200 and b"dashboard.js" in page.content
    assert client.get("/api/status").status_code == 200
