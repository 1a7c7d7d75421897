"""Fixtures: real Redis, real PostgreSQL and SQLite (migrated by Alembic), a tiny model, an app, a client.

Tests that take `settings` run once per database backend (end-to-end tests on PostgreSQL only, unless one
asks for SQLite: tests/e2e/conftest.py). Each backend uses its own Redis database number so that workers of
one backend never take the other's tasks.
"""

from __future__ import annotations

import os

# One torch intra-op thread for the test process and every worker process it starts (they inherit the
# environment; torch reads it when first imported, after this). On a busy 2-core machine torch's second
# thread mostly waits for the first: a tiny model's training step took 25 times as long with two threads
# (docs/benchmarks.md, "Torch threads on this VM"). Results change only through float summation order,
# and every comparison in the suite runs both sides in one process or with this same setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import delete

from shared.db import dispose_engine, session_scope
from shared.fairness import BROKER_BACKOFF
from shared.keys import create_key
from shared.migrate import upgrade
from shared.models import (
    ApiKey,
    Batch,
    Job,
    JobEvent,
    OutboxMessage,
    TenantWebhookSecret,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from shared.registry import register_model
from shared.settings import Settings

PG_ADMIN_URL = os.environ.get("CANVAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _redis_of_this_process() -> str:
    """The Redis server of this test process (scheme, host and port; tests pick database numbers). Under
    pytest-xdist (`make test` runs two processes) every process but the first starts a redis-server of its
    own on a free port, stopped when it exits, so the fixed database numbers the suite uses are never
    shared between processes. Set in the environment, where the modules that read it find it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if worker != "gw0" and "CANVAS_TEST_REDIS_STARTED" not in os.environ:
        import atexit
        import shutil
        import tempfile

        from shared.local_redis import LocalRedis

        server = LocalRedis(Path(tempfile.mkdtemp(prefix=f"redis-{worker}-")), executable=shutil.which("redis-server"))
        server.start()
        atexit.register(server.stop)
        os.environ["CANVAS_TEST_REDIS"] = f"redis://127.0.0.1:{server.port}"
        os.environ["CANVAS_TEST_REDIS_STARTED"] = "1"
    return os.environ.get("CANVAS_TEST_REDIS", "redis://127.0.0.1:6379")


REDIS_BASE = _redis_of_this_process()
REDIS_DB = {"sqlite": 14, "postgresql": 15}
TINY = "tiny"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny", seed=0, canvas_length=32)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"canvas_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    yield url
    dispose_engine(url)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def base_settings(
    backend: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, request: pytest.FixtureRequest
) -> Settings:
    """Migrated database of this backend, with the tiny model registered."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'canvas.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    with session_scope(url) as session:
        register_model(session, TINY, tiny_model_dir)
    return Settings(
        database_url=url,
        redis_url=f"{REDIS_BASE}/{REDIS_DB[backend]}",
        lease_seconds=4.0,
        heartbeat_seconds=0.5,
        cancel_poll_seconds=0.1,
        sweep_seconds=0.3,
        webhook_schedule=(0.3, 0.3, 0.3, 0.3),
        webhook_timeout_seconds=2.5,  # a loopback receiver in a busy test process can take a second to answer
        webhook_allow="127.0.0.1/32",  # the tests' receivers listen on loopback
        var_dir=tmp_path_factory.mktemp("var"),
    )


@pytest.fixture
def settings(base_settings: Settings) -> Iterator[Settings]:
    """The backend's settings, with job tables emptied before each test (models stay)."""
    with session_scope(base_settings.database_url) as session:
        for table in (
            WebhookAttempt,
            WebhookMessage,
            WebhookEndpoint,
            TenantWebhookSecret,
            OutboxMessage,
            JobEvent,
            Job,
            Batch,
            ApiKey,
        ):
            session.execute(delete(table))
    BROKER_BACKOFF.clear()  # a broker an earlier test made refuse is not paused in this one
    yield base_settings


@pytest.fixture
def keys(settings: Settings) -> dict[str, str]:
    """Plain keys: `a` and `b` in two tenants, `admin` in a third."""
    out = {}
    with session_scope(settings.database_url) as session:
        for name, admin in (("a", False), ("b", False), ("admin", True)):
            out[name] = create_key(session, f"test {name}", admin=admin)[1]
    return out


@pytest.fixture
def app(settings: Settings):
    from api.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
