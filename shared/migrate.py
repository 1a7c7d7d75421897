"""Running the Alembic migrations from code (tests, `canvas db upgrade`, the embedded stack)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, make_url, pool, text

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
# The PostgreSQL advisory lock that `upgrade` holds: any 64-bit number no other code of ours locks.
MIGRATION_LOCK = 0x63616E7661730001  # "canvas", 1


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration is noise at start-up
    with migration_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, hold a session advisory lock meanwhile, so that two upgrades (two deployments'
    migration jobs, a job and a developer) run one after the other instead of racing: the second finds the
    schema at head and does nothing. SQLite needs none: one file, one writer at a time."""
    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if not connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK}):
                log.info("another migration is running: waiting for it to finish")
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
