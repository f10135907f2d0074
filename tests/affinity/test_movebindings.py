"""Moving the affinity store between real databases (the run's database -> a fresh other one)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import uuid

import pytest
from django.core.management import call_command

from affinity.services import binding_claim
from pools.models import Backend, Pool

pytestmark = pytest.mark.postgres


def test_every_binding_moves_to_the_other_database_and_a_rerun_adds_nothing(db, tmp_path, db_kind):
    pool = Pool.objects.create(id="main", ae_title="SYNTHIQ", port=11112)
    Backend.objects.create(id="node-a", pool=pool, ae_title="NODEA", host="h", port=104)
    now = dt.datetime.now(dt.UTC)
    for n in range(12):
        binding_claim(pool_id="main", study_uid=f"1.2.840.{n}", backend_id="node-a", now=now)

    if db_kind == "sqlite":  # SQLite -> PostgreSQL, the usual move
        import psycopg

        admin = os.environ.get("SYNTHIQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
        name = f"synthiq_move_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        target = admin.rsplit("/", 1)[0] + f"/{name}"
        try:
            call_command("movebindings", to=target)
            call_command("movebindings", to=target)
            with psycopg.connect(target) as conn:
                rows = conn.execute("SELECT study_uid, backend_id FROM affinity_binding ORDER BY study_uid").fetchall()
        finally:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:  # PostgreSQL -> SQLite
        target_file = tmp_path / "moved.sqlite3"
        call_command("movebindings", to=f"sqlite:///{target_file}")
        call_command("movebindings", to=f"sqlite:///{target_file}")
        with sqlite3.connect(target_file) as conn:
            rows = conn.execute("SELECT study_uid, backend_id FROM affinity_binding ORDER BY study_uid").fetchall()

    assert rows == sorted((f"1.2.840.{n}", "node-a") for n in range(12))


def test_moving_onto_the_same_database_is_refused(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="current database"):
        call_command("movebindings", to=os.environ["DATABASE_URL"])
