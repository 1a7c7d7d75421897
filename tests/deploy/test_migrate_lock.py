"""`canvas db upgrade` on PostgreSQL holds an advisory lock (shared/migrate.py), so that two migration runs
(two releases' Kubernetes Jobs, a Job and an operator) never race: the second waits and finds the schema at
head. Deployment relies on it; the lock is tested here, against the real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, pool, text

from shared.migrate import MIGRATION_LOCK, upgrade
from tests.conftest import PG_ADMIN_URL
from tests.deploy.conftest import ROOT


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"canvas_deploy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_an_upgrade_waits_for_the_one_holding_the_lock(empty_database: str) -> None:
    holder = create_engine(empty_database, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    with holder.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        waiting = threading.Thread(target=upgrade, args=(empty_database,))
        waiting.start()
        waiting.join(1.5)
        assert waiting.is_alive() and "alembic_version" not in tables(empty_database)  # it waits, untouched
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    waiting.join(30)
    holder.dispose()
    assert not waiting.is_alive() and {"alembic_version", "jobs"} <= tables(empty_database)


def test_concurrent_upgrades_of_a_new_database_both_succeed(empty_database: str) -> None:
    """Two `canvas db upgrade` processes at once, as two migration Jobs would run. Without the lock they race
    (one blocks on the other's CREATE TABLE, then fails on a duplicate or deadlocks)."""
    env = {**os.environ, "DATABASE_URL": empty_database}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "db", "upgrade"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=60)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert "jobs" in tables(empty_database)
