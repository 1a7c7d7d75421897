"""Database engines and sessions. SQLite (embedded default) and PostgreSQL (production) are both supported.

A PostgreSQL connection attempt ends after `connect_timeout` seconds (libpq's parameter, given in
DATABASE_URL as `?connect_timeout=N`; DEFAULT_CONNECT_TIMEOUT_SECONDS when the URL names none), so a
database host that has gone silent fails requests with an error instead of holding their threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_CONNECT_TIMEOUT_SECONDS = 5  # libpq counts whole seconds (and waits at least 2)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the API read while a worker writes; busy_timeout makes writers wait instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


POOL_SIZE, POOL_OVERFLOW = 5, 10  # PostgreSQL: at most 15 connections per process
POOL_TIMEOUT_SECONDS = 10  # a request that finds every connection in use waits this long, then gets a 503
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()  # threads asking at once must get one engine, not one pool each


def get_engine(url: str) -> Engine:
    """One engine per URL and process (engines hold connection pools; never share one across a fork)."""
    with _lock:
        if url not in _engines:
            _engines[url] = _new_engine(url)
        return _engines[url]


def _new_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 15, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = (
        {} if "connect_timeout" in make_url(url).query else {"connect_timeout": DEFAULT_CONNECT_TIMEOUT_SECONDS}
    )
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args=connect_args,
    )


def session_factory(url: str) -> sessionmaker[Session]:
    engine = get_engine(url)
    with _lock:
        if url not in _factories:
            _factories[url] = sessionmaker(bind=engine, expire_on_commit=False)
        return _factories[url]


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


T = TypeVar("T")

# PostgreSQL aborts one transaction of a deadlock (SQLSTATE 40P01) or of a serialization conflict (40001)
# and expects the application to run it again.
RETRYABLE_SQLSTATES = ("40P01", "40001")
TRANSACTION_ATTEMPTS = 3


def commit_retrying(session: Session, work: Callable[[Session], T]) -> T:
    """Run `work(session)` and commit; when PostgreSQL aborts the transaction as a deadlock's victim, roll
    back and run it again (up to TRANSACTION_ATTEMPTS times). `work` must be safe to run again from the
    start: it reads what it changes inside the transaction. Other errors propagate at once."""
    for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
        try:
            result = work(session)
            session.commit()
            return result
        except OperationalError as exc:
            session.rollback()
            if getattr(exc.orig, "sqlstate", None) not in RETRYABLE_SQLSTATES or attempt == TRANSACTION_ATTEMPTS:
                raise
    raise AssertionError("unreachable")
