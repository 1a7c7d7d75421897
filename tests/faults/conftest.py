"""Fixtures of the fault tests: a stack (API server, real Celery workers, the tiny model) over servers
that the test may stop, kill or flush: a private PostgreSQL cluster and a private Redis server.

Every test here checks the same promise (tests/faults/checks.py): each accepted job ends exactly once,
with its output, and no webhook message is lost or delivered under two ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import dispose_engine, session_scope
from shared.keys import create_key
from shared.migrate import upgrade
from shared.registry import register_model
from shared.settings import Settings
from tests.conftest import TINY
from tests.e2e.conftest import backend, model_host  # noqa: F401  (PostgreSQL only; the tiny model, loaded once)
from tests.e2e.test_faults import private_redis  # noqa: F401  (a Redis server the test may stop)
from tests.faults.checks import FIGURES
from tests.faults.servers import PrivatePostgres


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("fault figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().start()
    yield server
    server.close()


def stack_settings(database_url: str, redis_url: str, var_dir: Path, tiny_model_dir: Path) -> Settings:
    """The suite's settings (tests/conftest.py) over these servers, the schema migrated, the tiny model
    registered."""
    upgrade(database_url)
    with session_scope(database_url) as session:
        register_model(session, TINY, tiny_model_dir)
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        lease_seconds=3.0,
        heartbeat_seconds=0.5,
        cancel_poll_seconds=0.1,
        sweep_seconds=0.3,
        webhook_schedule=(0.3, 0.3, 0.3, 0.3, 0.3, 0.3),
        webhook_timeout_seconds=1.0,
        webhook_allow="127.0.0.1/32",
        var_dir=var_dir,
    )


def tenant_key(settings: Settings) -> str:
    with session_scope(settings.database_url) as session:
        return create_key(session, "faults")[1]


@pytest.fixture
def on_private_postgres(private_postgres: PrivatePostgres, tmp_path: Path, tiny_model_dir: Path) -> Iterator[Settings]:
    """Settings over the private PostgreSQL, with a Redis database of this suite's own (emptied first)."""
    import redis

    base = os.environ.get("CANVAS_TEST_REDIS", "redis://127.0.0.1:6379")
    redis.Redis.from_url(f"{base}/5").flushdb()
    url = private_postgres.create_database("canvas")
    yield stack_settings(url, f"{base}/5", tmp_path / "var", tiny_model_dir)
    dispose_engine(url)
