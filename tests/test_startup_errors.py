"""Start-up mistakes an operator makes: each ends with one line naming the culprit and a
non-zero exit, never a traceback; and the README's manage.py commands work in a checkout."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from tests.harness import PYTHON, ROOT, free_port


def _manage(*argv: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1]


@pytest.fixture
def base_env() -> dict[str, str]:
    return dict(os.environ)


def test_a_database_url_that_is_not_one_is_named(base_env):
    line = _one_line(_manage("check", env=base_env | {"DATABASE_URL": "not a url"}))
    assert line.startswith("synthiq: DATABASE_URL: 'not a url' is not a database URL (expected sqlite:")


def test_a_log_level_that_does_not_exist_is_named(base_env):
    line = _one_line(_manage("check", env=base_env | {"LOG_LEVEL": "LOUD"}))
    assert line == "synthiq: LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"


def test_outside_a_checkout_a_missing_secret_key_fails_fast_in_one_line(base_env, tmp_path):
    env = {k: v for k, v in base_env.items() if k not in ("SECRET_KEY", "SYNTHIQ_ALLOW_DEV_KEY")}
    line = _one_line(_manage("check", env=env | {"SYNTHIQ_ENV_FILE": str(tmp_path / "none")}))
    assert line.startswith("synthiq: SECRET_KEY: not set")


def test_in_a_checkout_the_readmes_manage_py_commands_run_as_written(base_env, tmp_path):
    """`make setup` wrote .env with a generated key: no SYNTHIQ_ALLOW_DEV_KEY needed."""
    assert (ROOT / ".env").is_file(), "run `make setup` first: it writes this checkout's .env"
    env = {k: v for k, v in base_env.items() if k not in ("SECRET_KEY", "SYNTHIQ_ALLOW_DEV_KEY")}
    config = {"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Port": 11112,
                         "Backends": [{"Id": "node-a", "AeTitle": "NODEA", "Host": "10.0.0.11", "Port": 104}]}]}
    path = tmp_path / "synthiq.json"
    path.write_text(json.dumps(config))
    checked = _manage("loadconfig", "--check", str(path), env=env)
    assert checked.returncode == 0, checked.stderr
    made = _manage("createsuperuser", "--noinput", "--username", "readme-admin", "--email", "a@example.org",
                   env=env | {"DJANGO_SUPERUSER_PASSWORD": "not-a-real-one"})
    assert made.returncode == 0, made.stderr


def test_runproxy_on_a_taken_http_port_names_it(cluster, tmp_path):
    backend = cluster.backend("node-a")
    path = tmp_path / "synthiq.json"
    path.write_text(json.dumps(cluster.config([backend])))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line(_manage("runproxy", "--config", str(path), "--http", f"127.0.0.1:{port}", env=cluster.env))
    assert line == f"CommandError: --http: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_runproxy_waits_for_an_unreachable_database_then_names_it_without_its_password(cluster, tmp_path):
    backend = cluster.backend("node-a")
    path = tmp_path / "synthiq.json"
    path.write_text(json.dumps(cluster.config([backend])))
    url = f"postgres://synthiq:hunter2@127.0.0.1:{free_port()}/synthiq"
    result = _manage("runproxy", "--config", str(path), env=cluster.env | {"DATABASE_URL": url,
                                                                          "SYNTHIQ_DB_WAIT_SECONDS": "3"})
    line = _one_line(result)
    assert line.startswith(f"CommandError: database postgres://synthiq:***@127.0.0.1:{url.rsplit(':', 1)[1]} "
                           "unreachable after 3s"), line
    assert "hunter2" not in result.stderr + result.stdout
    assert result.stderr.count("unreachable (try ") >= 2  # each try logged, backing off


def test_make_run_installs_no_debian_package():
    plan = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "manage.py demo" in plan.stdout and "apt-get" not in plan.stdout


def _commands(tmp_path) -> dict[str, tuple[str, ...]]:
    """Every command a user runs, as the README gives it (the demo on ports of its own)."""
    config = tmp_path / "synthiq.json"
    config.write_text(json.dumps({"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1",
                                             "Port": free_port(), "Backends": [
                                                 {"Id": "node-a", "AeTitle": "NODEA", "Host": "127.0.0.1",
                                                  "Port": free_port()}]}]}))
    base = _free_run(7)
    return {"migrate": ("migrate",),
            "createsuperuser": ("createsuperuser", "--noinput", "--username", "x", "--email", "x@example.org"),
            "runproxy": ("runproxy", "--config", str(config)),
            "loadconfig": ("loadconfig", str(config)),
            "loadconfig --check": ("loadconfig", "--check", str(config)),
            "demo": ("demo", "--dicom-port", str(free_port()), "--http", f"127.0.0.1:{free_port()}",
                     "--backend-base-port", str(base)),
            "adopt": ("adopt", "--pool", "main"),
            "verify": ("verify", "--pool", "main", "--all"),
            "consolidate": ("consolidate", "--pool", "main", "--all-split")}


def _free_run(span: int) -> int:
    """A base port with base+1..base+span and base+101..base+100+span free (the demo's backends)."""
    for _ in range(50):
        base = free_port() % 20000 + 20000
        ports = [base + n for n in range(1, span + 1)] + [base + 100 + n for n in range(1, span + 1)]
        if all(_bindable(p) for p in ports):
            return base
    raise AssertionError("no free run of ports for the demo's backends")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


DEAD = ("postgresql://synthiq@127.0.0.1:{dead}/synthiq", "Connection refused")
FAILURES = [("postgresql://no_such_role_x@127.0.0.1:5432/postgres", 'role "no_such_role_x" does not exist'),
            ("postgresql://postgres@127.0.0.1:5432/no_such_database_x", 'database "no_such_database_x" does not exist'),
            ("postgress://x@127.0.0.1/db", "unknown scheme 'postgress'")]
COMMANDS = ["migrate", "createsuperuser", "runproxy", "loadconfig", "loadconfig --check", "demo", "adopt", "verify",
            "consolidate"]


# Every command with an unreachable database; every other way a database is unusable with the
# commands that start processes (each command reads it through the same settings and manage.py).
@pytest.mark.parametrize("command, url, said", [(c, *DEAD) for c in COMMANDS]
                         + [(c, *f) for f in FAILURES for c in ("runproxy", "demo")])
def test_a_database_that_cannot_be_used_is_one_line_for_every_command(base_env, tmp_path, command, url, said):
    url = url.format(dead=free_port())
    env = base_env | {"DATABASE_URL": url, "SYNTHIQ_DB_WAIT_SECONDS": "1"}
    result = _manage(*_commands(tmp_path)[command], env=env)
    line = _one_line(result)
    assert said in line and ("DATABASE_URL" in line or url in line), line
    assert "ready" not in result.stdout + result.stderr  # nothing was started before the database was found unusable


def test_an_unknown_database_scheme_is_named(base_env):
    line = _one_line(_manage("migrate", env=base_env | {"DATABASE_URL": "postgress://x@127.0.0.1/db"}))
    assert line.startswith("synthiq: DATABASE_URL: unknown scheme 'postgress' (expected sqlite:")


def test_a_var_dir_that_cannot_be_created_is_named(base_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {k: v for k, v in base_env.items() if k != "DATABASE_URL"} | {"SYNTHIQ_VAR_DIR": str(blocker / "var")}
    for argv in _commands(tmp_path).values():
        line = _one_line(_manage(*argv, env=env))
        assert "cannot be created" in line and "set SYNTHIQ_VAR_DIR" in line, line
