"""Helpers for the admin-surface tests: an API user, health rows, a live API client."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from tests.harness import BackendHandle, clean_database, wait_for  # noqa: F401  (re-exported)

PASSWORD = "correct-horse-battery"


@dataclass
class ApiUser:
    username: str
    password: str
    token: str


def api_user() -> ApiUser:
    """A staff user (the admin login form takes staff only) and a DRF token, as
    `createsuperuser` and `drf_create_token` would make them."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    username = f"ops-{uuid.uuid4().hex[:8]}"
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=True)
    return ApiUser(username, PASSWORD, Token.objects.create(user=user).key)


def form_login(client, username: str, password: str, **extra: str) -> int:
    """Log a django.test.Client in through the admin login form, as a browser does, and
    return the status (302 in, 200 refused, 429 locked out). Client.login() passes no
    request, which django-axes' backend refuses; it watches this form."""
    rsp = client.post("/admin/login/", {"username": username, "password": password, "next": "/"}, **extra)
    return rsp.status_code


def healthy(backends: list[BackendHandle] | list[str], *, loads: dict[str, float | None] | None = None) -> None:
    """Health rows as the heartbeat service writes them (that service is tested apart),
    and a fresh heartbeat round so nothing looks stale."""
    from health.models import BackendHealth

    now = dt.datetime.now(dt.UTC)
    for b in backends:
        backend_id = b if isinstance(b, str) else b.id
        load = (loads or {}).get(backend_id, 0.0)
        BackendHealth.objects.update_or_create(
            backend_id=backend_id,
            defaults={"healthy": True, "load": load, "capacity": 50,
                      "queue_depth": None if load is None else round(load * 50),
                      "last_ok_utc": now, "last_check_utc": now},
        )
    heartbeat_round("main", now)


def heartbeat_round(pool_id: str, at: dt.datetime) -> None:
    from health.models import HeartbeatRound

    HeartbeatRound.objects.update_or_create(pool_id=pool_id, defaults={"completed_utc": at, "runner": "test"})


def study_root() -> str:
    """A short unique UID root, so `<root>.1`, `<root>.11` stay within 64 characters."""
    return f"2.25.{uuid.uuid4().int % 10**20}"


class Api:
    """The running app's HTTP API, as an operator's script would call it."""

    def __init__(self, port: int, token: str | None = None):
        self.base = f"http://127.0.0.1:{port}"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.base + path, params=params, timeout=10)

    def json(self, path: str, **params: Any) -> Any:
        rsp = self.get(path, **params)
        assert rsp.status_code == 200, f"GET {path}: {rsp.status_code} {rsp.text[:500]}"
        return rsp.json()

    def post(self, path: str, *, headers: dict[str, str] | None = None) -> requests.Response:
        return self.session.post(self.base + path, headers=headers, timeout=10)

    def wait_counters(self, predicate, *, timeout: float = 15, what: str = "published counters") -> dict:
        """Poll /api/status until the counters runproxy publishes (every ~2 s) satisfy it."""
        return wait_for(lambda: (s := self.json("/api/status")) and predicate(s) and s, timeout=timeout,
                        interval=0.2, what=what)
