"""Database engines and sessions. SQLite (embedded default) and PostgreSQL (production) are both supported.

A PostgreSQL connection attempt ends after `connect_timeout` seconds (libpq's parameter, given in
DATABASE_URL as `?connect_timeout=N`; DEFAULT_CONNECT_TIMEOUT_SECONDS when the URL names none), so a
database host that has gone silent fails requests with an error instead of holding their threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_CONNECT_TIMEOUT_SECONDS = 5  # libpq counts whole seconds (and waits at least 2)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the API read while a worker writes; busy_timeout makes writers wait instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL and process (engines hold connection pools; never share one across a fork)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 15, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = (
        {} if "connect_timeout" in make_url(url).query else {"connect_timeout": DEFAULT_CONNECT_TIMEOUT_SECONDS}
    )
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=connect_args)


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engine(url: str) -> None:
    """Drop the pooled connections of one URL (after a fork, or when a test drops its database)."""
    get_engine(url).dispose()
