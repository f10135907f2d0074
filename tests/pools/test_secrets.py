"""Secrets stay secret: commitment tokens and health passwords never reach a diff, a
`loadconfig --check`, an error line or an admin page; tokens are stored as keyed hashes and
authenticate only their own enabled backend; credentials never cross plain http:// unless
allowed; and the files SynthIQ writes are its own user's only."""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import io
import json
import os
import re
import stat
import subprocess

import pytest

from pools.config import SECRET_KEYS, Config, ConfigError, config_parse, differences
from tests.harness import PYTHON, ROOT

TOKEN_A = "commit-token-node-a-0123456789"
TOKEN_B = "commit-token-node-b-0123456789"
PASSWORD = "health-password-of-node-a"

CONFIG = {
    "Pools": [{
        "Id": "main", "AeTitle": "SYNTHIQ", "Port": 11112,
        "Backends": [
            {"Id": "node-a", "AeTitle": "NODEA", "Host": "10.0.0.11", "Port": 104, "CommitmentToken": TOKEN_A,
             "Health": {"Mode": "native", "Url": "https://10.0.0.11:8443/api/health",
                        "Username": "synthiq", "Password": PASSWORD}},
            {"Id": "node-b", "AeTitle": "NODEB", "Host": "10.0.0.12", "Port": 104, "CommitmentToken": TOKEN_B},
        ],
    }],
}


def _config(mutate=lambda d: None) -> dict:
    data = copy.deepcopy(CONFIG)
    mutate(data)
    return data


def _errors(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config_parse(data=data)
    return exc.value.errors


def _health(**changes):
    def mutate(d):
        d["Pools"][0]["Backends"][0]["Health"].update(changes)
    return mutate


# -- the config file -------------------------------------------------------------------


def test_credentials_over_plain_http_are_a_config_error_naming_the_key_path():
    errors = _errors(_config(_health(Url="http://10.0.0.11:8080/api/health")))
    assert errors == ["Pools[0].Backends[0].Health.Url: credentials over plain http://; use https:// or set "
                      "Health.AllowPlainHttpCredentials to true"]
    # A password alone is a credential too.
    no_user = _config(_health(Url="http://10.0.0.11:8080/api/health"))
    del no_user["Pools"][0]["Backends"][0]["Health"]["Username"]
    assert _errors(no_user)[0].startswith("Pools[0].Backends[0].Health.Url: credentials over plain http://")


def test_credentials_over_plain_http_are_accepted_when_the_backend_allows_it():
    config = config_parse(data=_config(_health(Url="http://10.0.0.11:8080/api/health",
                                               AllowPlainHttpCredentials=True)))
    assert config.pools[0].backends[0].health.allow_plain_http_credentials is True
    assert config_parse(data=CONFIG).pools[0].backends[0].health.allow_plain_http_credentials is False
    assert _errors(_config(_health(AllowPlainHttpCredentials="yes"))) == [
        "Pools[0].Backends[0].Health.AllowPlainHttpCredentials: expected true or false, got the string 'yes'"]


def test_two_backends_with_the_same_token_are_a_config_error_that_does_not_echo_it():
    errors = _errors(_config(lambda d: d["Pools"][0]["Backends"][1].update(CommitmentToken=TOKEN_A)))
    assert errors == ["Pools[0].Backends[1].CommitmentToken: the same token as backend 'node-a' "
                      "(each backend needs its own)"]


def test_a_secret_of_the_wrong_type_is_reported_without_its_value():
    errors = _errors(_config(_health(Password=987654321)))
    assert errors == ["Pools[0].Backends[0].Health.Password: expected a string, got a number"]


def test_every_secret_looking_key_of_the_config_model_is_treated_as_secret():
    def keys(model) -> set[str]:
        found = set()
        for name, field in model.model_fields.items():
            found.add(field.alias or name)
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(arg, type) and hasattr(arg, "model_fields"):
                    found |= keys(arg)
                for inner in getattr(arg, "__args__", ()):
                    if isinstance(inner, type) and hasattr(inner, "model_fields"):
                        found |= keys(inner)
        return found

    every = keys(Config)
    assert {"CommitmentToken", "Password", "Username", "AllowPlainHttpCredentials"} <= every
    assert {k for k in every if re.search("password|secret|token", k, re.I)} <= SECRET_KEYS


def test_differences_say_a_secret_changed_and_never_what_it_was_or_is():
    old = config_parse(data=CONFIG)
    new = config_parse(data=_config(lambda d: (
        d["Pools"][0]["Backends"][0].update(CommitmentToken="a-brand-new-token-for-node-a"),
        d["Pools"][0]["Backends"][0]["Health"].update(Password="a-brand-new-password"),
        d["Pools"][0]["Backends"][1].update(Weight=3),
    )))
    lines = differences(old, new)
    assert lines == ["Pools[main].Backends[node-a].Health.Password: changed",
                     "Pools[main].Backends[node-a].CommitmentToken: changed",
                     "Pools[main].Backends[node-b].Weight: 1 -> 3"]
    # A whole section that appears prints its secrets masked.
    appeared = differences({"Health": None}, {"Health": {"Mode": "native", "Password": PASSWORD}})
    assert appeared == ["Health: None -> {'Mode': 'native', 'Password': '(set)'}"]
    for text in (TOKEN_A, PASSWORD, "a-brand-new-token-for-node-a", "a-brand-new-password"):
        assert text not in "\n".join(lines + appeared)


# -- the database: loadconfig, hashes, the commitment API, the admin --------------------


def _sync(data: dict) -> None:
    from pools.services import config_sync

    config_sync(config=config_parse(data=data))


def _loadconfig_check(tmp_path, data: dict) -> str:
    from django.core.management import call_command

    path = tmp_path / "synthiq.json"
    path.write_text(json.dumps(data))
    out = io.StringIO()
    call_command("loadconfig", str(path), "--check", stdout=out)
    return out.getvalue()


def test_loadconfig_check_prints_no_password_or_token(db, tmp_path):
    first = _loadconfig_check(tmp_path, CONFIG)  # against an empty database: everything added
    assert "config OK" in first and "would change Pools[main]: added" in first
    _sync(CONFIG)
    rotated = _config(lambda d: (
        d["Pools"][0]["Backends"][0].update(CommitmentToken="a-brand-new-token-for-node-a", Weight=2),
        d["Pools"][0]["Backends"][0]["Health"].update(Password="a-brand-new-password"),
    ))
    second = _loadconfig_check(tmp_path, rotated)
    assert "would change Pools[main].Backends[node-a].Weight: 1 -> 2" in second
    for text in (TOKEN_A, TOKEN_B, PASSWORD, "a-brand-new-token-for-node-a", "a-brand-new-password"):
        assert text not in first + second


def test_tokens_are_stored_as_keyed_hashes(db):
    from pools.models import Backend

    _sync(CONFIG)
    stored = Backend.objects.get(id="node-a").commitment_token
    assert re.fullmatch(r"hmac-sha256\$[0-9a-f]{64}", stored)
    assert TOKEN_A not in stored
    assert not Backend.objects.filter(commitment_token__in=[TOKEN_A, TOKEN_B]).exists()
    _sync(CONFIG)  # deterministic: a re-sync stores the same hash
    assert Backend.objects.get(id="node-a").commitment_token == stored


def test_the_migration_hashes_tokens_stored_in_plaintext(db):
    from django.apps import apps

    from pools.models import Backend
    from pools.selectors import backend_by_commitment_token

    _sync(CONFIG)
    hashed = Backend.objects.get(id="node-a").commitment_token
    Backend.objects.filter(id="node-a").update(commitment_token=TOKEN_A)  # as 0002 left it
    migration = importlib.import_module("pools.migrations.0003_commitment_token_hashed")
    migration.tokens_hash(apps, None)
    migration.tokens_hash(apps, None)  # a hash is not hashed again
    assert Backend.objects.get(id="node-a").commitment_token == hashed
    assert backend_by_commitment_token(token=TOKEN_A).id == "node-a"


def test_a_token_authenticates_its_own_enabled_backend_only(db, tmp_path):
    from pools.selectors import backend_by_commitment_token

    _sync(CONFIG)
    assert backend_by_commitment_token(token=TOKEN_A).id == "node-a"
    assert backend_by_commitment_token(token=TOKEN_B).id == "node-b"
    stored = backend_by_commitment_token(token=TOKEN_A).commitment_token
    for wrong in ("", "not-a-backend-token-at-all", TOKEN_A.upper(), stored):
        assert backend_by_commitment_token(token=wrong) is None
    _sync(_config(lambda d: d["Pools"][0]["Backends"][0].update(Enabled=False)))
    assert backend_by_commitment_token(token=TOKEN_A) is None
    _sync(CONFIG)
    _sync(_config(lambda d: d["Pools"][0]["Backends"].pop(0)))  # removed from the file: disabled
    assert backend_by_commitment_token(token=TOKEN_A) is None


def test_the_commitment_api_accepts_the_right_token_and_refuses_wrong_and_disabled_ones(db):
    from django.test import Client

    from affinity.services import binding_claim

    _sync(CONFIG)
    suid = "1.2.826.0.1.3680043.2.1143.777"
    binding_claim(pool_id="main", study_uid=suid, backend_id="node-a", now=dt.datetime.now(dt.UTC))
    client = Client(HTTP_HOST="127.0.0.1")
    url = f"/api/affinity/{suid}/commitment"

    def post(token: str) -> int:
        return client.post(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code

    assert post("not-a-backend-token-at-all") == 401
    assert post(TOKEN_B) == 403  # a real token, of the backend the study is not bound to
    _sync(_config(lambda d: d["Pools"][0]["Backends"][0].update(Enabled=False)))
    assert post(TOKEN_A) == 401
    _sync(CONFIG)
    assert post(TOKEN_A) == 200


def test_the_admin_shows_neither_the_health_password_nor_the_commitment_token(db):
    from django.contrib.auth.models import User
    from django.test import Client

    from pools.models import Backend

    _sync(CONFIG)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(User.objects.create_superuser(username="secrets-admin", password=None, email=""))
    stored = Backend.objects.get(id="node-a").commitment_token
    pages = []
    for url in ("/admin/pools/backend/node-a/change/", "/admin/pools/backend/", "/admin/pools/pool/main/change/"):
        rsp = client.get(url)
        assert rsp.status_code == 200, url
        pages.append(rsp.content.decode())
    assert "synthiq" in pages[0] and "(set)" in pages[0]  # the health check is shown, its password masked
    for text in (PASSWORD, TOKEN_A, stored):
        assert all(text not in page for page in pages), text


# -- files -----------------------------------------------------------------------------


def test_files_written_by_manage_py_are_readable_by_their_owner_only(tmp_path):
    var = tmp_path / "var"
    env = dict(os.environ) | {"DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
                              "SYNTHIQ_VAR_DIR": str(var), "LOG_FILE": str(tmp_path / "logs" / "synthiq.log")}
    # A permissive umask to start from: what the files get is manage.py's doing.
    done = subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, umask=0o022)
    assert done.returncode == 0, done.stderr
    for path in (tmp_path / "fresh.sqlite3", var, var / "static", tmp_path / "logs"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path}: {oct(mode)}"


def test_credentials_inside_a_health_url_are_a_config_error_that_does_not_echo_them():
    from pools.config import ConfigError, config_parse

    with pytest.raises(ConfigError) as caught:
        config_parse(data={"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Port": 11112, "Backends": [
            {"Id": "node-a", "AeTitle": "NODEA", "Host": "127.0.0.1", "Port": 104,
             "Health": {"Mode": "native", "Url": "https://synthiq:hunter2-secret@pacs.example/health"}}]}]})
    text = "\n".join(caught.value.errors)
    assert "Pools[0].Backends[0].Health.Url: credentials inside the URL" in text
    assert "hunter2-secret" not in text
