"""Engines: a PostgreSQL server that never answers cannot hold a thread past the connect timeout; one
engine per URL and process, however many threads ask for it at once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared.db import DEFAULT_CONNECT_TIMEOUT_SECONDS, get_engine


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port whose listener completes TCP handshakes (the kernel's backlog) and never says a word, like a
    database host behind a hung proxy: TCP itself never gives up on it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def seconds_to_fail(url: str, limit: float) -> float:
    """How long connecting takes to fail; fails the test if it has not within `limit` (the thread is left,
    a daemon, to the hung connect)."""
    result: list[BaseException | float] = []

    def connect() -> None:
        started = time.monotonic()
        try:
            with get_engine(url).connect() as connection:
                connection.execute(text("select 1"))
        except BaseException as exc:  # handed to the test
            result.append(exc if not isinstance(exc, OperationalError) else time.monotonic() - started)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"connecting still waits after {limit} s"
    [outcome] = result
    assert isinstance(outcome, float), outcome
    return outcome


def test_a_silent_database_host_fails_the_connect_after_the_default_timeout(silent_server) -> None:
    elapsed = seconds_to_fail(f"postgresql+psycopg://canvas@127.0.0.1:{silent_server}/canvas", limit=15)
    assert DEFAULT_CONNECT_TIMEOUT_SECONDS - 0.5 < elapsed < DEFAULT_CONNECT_TIMEOUT_SECONDS + 3


def test_the_urls_own_connect_timeout_wins(silent_server) -> None:
    url = f"postgresql+psycopg://canvas@127.0.0.1:{silent_server}/canvas?connect_timeout=2"
    assert seconds_to_fail(url, limit=15) < DEFAULT_CONNECT_TIMEOUT_SECONDS - 1


def test_threads_asking_at_once_share_one_engine(tmp_path) -> None:
    """Before: each of a burst of first requests (a fresh API process under load) made an engine of its
    own, each keeping a pool of open connections: 63 connections to PostgreSQL from 2 processes whose
    pools allow 30 (bench/load.py)."""
    from shared.db import session_factory

    url = f"sqlite:///{tmp_path}/canvas.db"
    start, engines = threading.Barrier(32), []

    def ask() -> None:
        start.wait()
        engines.append(session_factory(url).kw["bind"])

    threads = [threading.Thread(target=ask) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {id(e) for e in engines} == {id(get_engine(url))}
