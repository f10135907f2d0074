"""The web side's hardening: password rules, the login and API token lockouts (logged), and a
clean `check --deploy` under an https environment."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.admin.support import api_user, form_login

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(db):
    from axes.utils import reset
    from django.core.cache import cache
    from django.test import Client

    yield Client(HTTP_HOST="127.0.0.1")
    reset()  # lockouts are kept in the database (axes) and this process's cache (tokens)
    cache.clear()


def _log_lines(containing: str) -> list[str]:
    """Lines of the project's log file (settings.LOGGING, as configured for this process)."""
    from django.conf import settings

    path = Path(settings.LOG_FILE)
    return [line for line in path.read_text().splitlines() if containing in line] if path.is_file() else []


def test_weak_passwords_are_refused(db):
    from django.contrib.auth.forms import AdminPasswordChangeForm
    from django.contrib.auth.models import User
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    user = User.objects.create_user(username="operator-jane")
    for weak, why in (("Sh0rt-pass!", "too short"), ("password1234", "too common"),
                      ("493827164502", "entirely numeric"), ("operator-jane1", "too similar")):
        with pytest.raises(ValidationError) as refused:
            validate_password(weak, user)
        assert why in " ".join(refused.value.messages), weak
    validate_password("amber-lighthouse-quietly", user)

    # The admin's own "change password" form applies the same rules.
    form = AdminPasswordChangeForm(user, {"password1": "Sh0rt-pass!", "password2": "Sh0rt-pass!"})
    assert not form.is_valid() and "at least 12 characters" in str(form.errors)


def test_the_fifth_failed_login_locks_that_username_and_address_out_even_for_the_right_password(client):
    user = api_user()
    assert [form_login(client, user.username, f"wrong-{n}") for n in range(4)] == [200] * 4
    assert form_login(client, user.username, "wrong-4") == 429  # the fifth failure locks out
    assert form_login(client, user.username, user.password) == 429
    assert client.get("/").status_code == 302  # not logged in

    # Username + address: the same user from another address is not locked out.
    assert form_login(client, user.username, user.password, REMOTE_ADDR="10.20.30.40") == 302

    lockouts = _log_lines(f"AXES: Locking out username={user.username!r} ip='127.0.0.1'")
    assert len(lockouts) == 1 and " WARNING " in lockouts[0], lockouts


def test_ten_bad_tokens_from_one_address_lock_it_out_of_token_auth(client):
    user = api_user()
    address = "192.0.2.17"
    for n in range(10):
        rsp = client.get("/api/status", HTTP_AUTHORIZATION=f"Token bad-{n:036d}", REMOTE_ADDR=address)
        assert rsp.status_code == 401, n
    # Locked out: even the right token is refused now, and says when to come back.
    rsp = client.get("/api/status", HTTP_AUTHORIZATION=f"Token {user.token}", REMOTE_ADDR=address)
    assert rsp.status_code == 429 and 0 < int(rsp["Retry-After"]) <= 300
    # Another address is not.
    assert client.get("/api/status", HTTP_AUTHORIZATION=f"Token {user.token}").status_code == 200

    lines = _log_lines(f"token auth lockout ip={address!r}")
    assert len(lines) == 1 and " WARNING " in lines[0], lines


def test_check_deploy_is_clean_with_the_https_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SYNTHIQ_ALLOW_DEV_KEY")}
    env.update({
        "SYNTHIQ_ENV_FILE": str(tmp_path / "none.env"),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "synthiq.example.org",
        "SECURE_SSL_REDIRECT": "true",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
        "SESSION_COOKIE_SECURE": "true",
        "CSRF_COOKIE_SECURE": "true",
        "CSRF_TRUSTED_ORIGINS": "https://synthiq.example.org",
        "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    })
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "WARNINGS" not in output, output
    assert "no issues" in output

    # The same check without that environment is not clean: the test above can fail.
    env = {k: v for k, v in env.items() if not k.startswith(("SECURE_", "SESSION_", "CSRF_"))}
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "security.W008" in done.stdout + done.stderr
