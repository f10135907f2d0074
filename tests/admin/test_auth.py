"""Everything but /healthz and /metrics needs a login or a token (the WSGI app in process)."""

from __future__ import annotations

import pytest

from tests.admin.support import api_user, form_login

PROTECTED_GET = [
    "/api/status", "/api/pools", "/api/affinity", "/api/affinity?search=1.2", "/api/activity",
    "/api/affinity/1.2.3/commitment", "/api/schema",
]
PROTECTED_POST = [
    "/api/backends/node-a/drain", "/api/backends/node-a/enable", "/api/affinity/1.2.3/commitment",
]


@pytest.fixture
def client(db):
    from django.core.cache import cache
    from django.test import Client

    yield Client(HTTP_HOST="127.0.0.1")
    cache.clear()  # the bad tokens sent count toward this process's token lockout


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
    assert form_login(client, user.username, user.password) == 302
    page = client.get("/")
    assert page.status_code == 200 and b"dashboard.js" in page.content
    assert client.get("/api/status").status_code == 200


@pytest.fixture
def backend_node_a(db, tmp_path):
    import json

    from pools.config import config_load
    from pools.services import config_sync

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Port": 11112, "Backends": [
        {"Id": "node-a", "AeTitle": "NODEA", "Host": "127.0.0.1", "Port": 104}]}]}))
    config_sync(config=config_load(path=path))
    return "node-a"


def test_drain_and_enable_need_a_staff_user(client, backend_node_a):
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    viewer = User.objects.create_user(username="viewer", password="a-long-enough-passphrase")
    viewer_token = Token.objects.create(user=viewer).key
    for action in ("drain", "enable"):
        rsp = client.post(f"/api/backends/{backend_node_a}/{action}", HTTP_AUTHORIZATION=f"Token {viewer_token}")
        assert rsp.status_code == 403, action
    assert client.get("/api/pools", HTTP_AUTHORIZATION=f"Token {viewer_token}").status_code == 200  # reads stay open

    staff = api_user()
    rsp = client.post(f"/api/backends/{backend_node_a}/drain", HTTP_AUTHORIZATION=f"Token {staff.token}")
    assert rsp.status_code == 200 and rsp.json()["draining"] is True
    # The dashboard's Drain button: a staff session (the admin login form admits only staff).
    assert form_login(client, staff.username, staff.password) == 302
    rsp = client.post(f"/api/backends/{backend_node_a}/enable")
    assert rsp.status_code == 200 and rsp.json()["draining"] is False
