"""Test session set-up: one real database per run (SQLite by default, PostgreSQL with
SYNTHIQ_TEST_DB=postgresql), shared by this process and the processes the tests start."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.harness import Cluster, clean_database

_STATE: dict[str, str] = {}
PG_ADMIN_URL = os.environ.get("SYNTHIQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _create_pg_database() -> str:
    import psycopg

    name = f"synthiq_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.exit(
            f"PostgreSQL not reachable at {PG_ADMIN_URL} ({exc}). Start it with: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            returncode=3,
        )
    _STATE["pg_name"] = name
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def pytest_configure(config):
    tmp = Path(tempfile.mkdtemp(prefix="synthiq-test-"))
    kind = os.environ.get("SYNTHIQ_TEST_DB", "sqlite")
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'test.sqlite3'}"
    elif kind == "postgresql":
        url = _create_pg_database()
    else:
        raise pytest.UsageError(f"SYNTHIQ_TEST_DB: expected sqlite or postgresql, got {kind!r}")
    os.environ.update(
        {
            "DATABASE_URL": url,
            "SYNTHIQ_ALLOW_DEV_KEY": "1",
            "SYNTHIQ_VAR_DIR": str(tmp / "var"),
            "DJANGO_SETTINGS_MODULE": "synthiq_project.settings",
            "PYTHONUNBUFFERED": "1",
        }
    )
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.pop("SYNTHIQ_CONFIG", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    _STATE["kind"] = kind


def pytest_report_header(config):
    return f"synthiq test database: {os.environ.get('SYNTHIQ_TEST_DB', 'sqlite')}"


def pytest_unconfigure(config):
    name = _STATE.get("pg_name")
    if not name:
        return
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_collection_modifyitems(items):
    """The longest files run first: `make test` hands whole files to two workers (--dist
    loadfile) in this order, and a long file taken last keeps one worker busy while the other
    has nothing left to do. A campaign's short run (one test of a minute or more) leads, then
    every file with a test marked slow."""
    def weight(marker: str) -> set:
        return {item.path for item in items if item.get_closest_marker(marker)}

    campaign, slow = weight("campaign"), weight("slow")
    items.sort(key=lambda item: (item.path not in campaign, item.path not in slow))  # stable: files keep their order


@pytest.fixture
def db():
    """A clean database for the test (this process and its children share it)."""
    from django.db import connection

    clean_database()
    yield
    connection.close()


@pytest.fixture
def cluster(tmp_path, db):
    c = Cluster(tmp=tmp_path, env=dict(os.environ))
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture(scope="session")
def db_kind() -> str:
    return _STATE["kind"]
