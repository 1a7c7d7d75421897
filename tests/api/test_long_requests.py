"""Requests that hold a server thread for long (job event streams, completions waiting or streaming) are
limited per API process, so slow clients cannot take every thread: past the limit they get 503 with
Retry-After before anything is recorded, while short requests go on being served. Over real HTTP (a
threaded WSGI server on loopback); no worker runs, so jobs stay queued and streams stay open."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests
from werkzeug.serving import make_server

from tests.conftest import TINY, auth


@contextmanager
def serving(settings) -> Iterator[str]:
    from api.app import create_app

    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_past_the_limit_long_requests_get_503_and_short_ones_are_still_served(settings, keys) -> None:
    limited = settings.with_(max_long_requests=2, rate_limit_per_minute=0, max_active_jobs=0)
    with serving(limited) as url, requests.Session() as http:
        http.headers.update(auth(keys["a"]))
        job = http.post(f"{url}/v1/jobs", json={"model": TINY, "prompt": "hi"}).json()["id"]
        streams = [http.get(f"{url}/v1/jobs/{job}/events", stream=True, timeout=30) for _ in range(2)]
        assert [s.status_code for s in streams] == [200, 200]  # the job stays queued: both stay open

        refused = http.get(f"{url}/v1/jobs/{job}/events", timeout=30)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        error = refused.json()["error"]
        assert error["type"] == "overloaded_error" and "CANVAS_MAX_LONG_REQUESTS=2" in error["message"]
        jobs_before = len(http.get(f"{url}/v1/jobs?limit=100", timeout=30).json()["data"])  # short: served
        completion = http.post(f"{url}/v1/completions", json={"model": TINY, "prompt": "hi"}, timeout=30)
        assert completion.status_code == 503
        assert len(http.get(f"{url}/v1/jobs?limit=100", timeout=30).json()["data"]) == jobs_before  # none made
        assert http.get(f"{url}/healthz", timeout=30).status_code == 200

        assert http.post(f"{url}/v1/jobs/{job}/cancel", timeout=30).status_code == 200
        for stream in streams:  # the job ended: each stream ends, and gives its slot back
            assert b"event: done" in b"".join(stream.iter_content(None))
        again = http.get(f"{url}/v1/jobs/{job}/events", timeout=30)
        assert again.status_code == 200 and b"event: done" in again.content


def test_a_completion_that_waits_gives_its_slot_back(settings, keys) -> None:
    limited = settings.with_(max_long_requests=1, sync_wait_seconds=0.5, rate_limit_per_minute=0)
    with serving(limited) as url:
        for _ in range(2):  # no worker: each waits, gets 504, and frees the one slot for the next
            waited = requests.post(
                f"{url}/v1/completions", json={"model": TINY, "prompt": "hi"}, headers=auth(keys["a"]), timeout=30
            )
            assert waited.status_code == 504


def test_one_tenant_cannot_take_every_slot(settings, keys) -> None:
    limited = settings.with_(max_long_requests=4, max_long_requests_per_tenant=2, rate_limit_per_minute=0)
    with serving(limited) as url, requests.Session() as a, requests.Session() as b:
        a.headers.update(auth(keys["a"]))
        b.headers.update(auth(keys["b"]))
        job_a = a.post(f"{url}/v1/jobs", json={"model": TINY, "prompt": "hi"}).json()["id"]
        job_b = b.post(f"{url}/v1/jobs", json={"model": TINY, "prompt": "hi"}).json()["id"]
        streams = [a.get(f"{url}/v1/jobs/{job_a}/events", stream=True, timeout=30) for _ in range(2)]
        assert [s.status_code for s in streams] == [200, 200]
        refused = a.get(f"{url}/v1/jobs/{job_a}/events", timeout=30)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert "CANVAS_MAX_LONG_REQUESTS_PER_TENANT=2" in refused.json()["error"]["message"]
        other = b.get(f"{url}/v1/jobs/{job_b}/events", stream=True, timeout=30)  # another tenant still gets one
        assert other.status_code == 200
        assert a.post(f"{url}/v1/jobs/{job_a}/cancel", timeout=30).status_code == 200
        for stream in streams:  # a's streams end and give their slots back to a
            assert b"event: done" in b"".join(stream.iter_content(None))
        assert b"event: done" in a.get(f"{url}/v1/jobs/{job_a}/events", timeout=30).content
        other.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_waiting_replays_hold_no_database_connection(settings, keys) -> None:
    """24 concurrent replays of one pending completion wait for it (no worker runs) while the pool has 15
    connections: another tenant's requests stay fast, and nothing fails with a 500 (before: the replays held
    every connection, idle in transaction, and the others waited 30 s for one, then got a 500)."""
    slow = settings.with_(sync_wait_seconds=10.0, rate_limit_per_minute=0, max_long_requests_per_tenant=0)
    body = {"model": TINY, "prompt": "hi"}
    replay_headers = {**auth(keys["a"]), "Idempotency-Key": "one-completion"}
    with serving(slow) as url:
        first = requests.post(f"{url}/v1/jobs", json=body, headers=auth(keys["a"]), timeout=30)
        assert first.status_code == 202

        def replay(_: int) -> requests.Response:
            return requests.post(f"{url}/v1/completions", json=body, headers=replay_headers, timeout=60)

        with ThreadPoolExecutor(24) as pool:
            replays = [pool.submit(replay, i) for i in range(24)]
            time.sleep(3.0)  # every replay is waiting now (each waits 10 s)
            latencies = []
            for _ in range(5):
                started = time.monotonic()
                listed = requests.get(f"{url}/v1/models", headers=auth(keys["b"]), timeout=60)
                latencies.append(time.monotonic() - started)
                assert listed.status_code == 200
            statuses = [f.result().status_code for f in replays]
    assert max(latencies) < 5.0, latencies  # when replays held every thread, a listing took 30 s
    assert set(statuses) == {504}, statuses  # each waited for the one job, which goes on


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_exhausted_pool_is_a_503_with_retry_after(settings, keys, client) -> None:
    from shared.db import POOL_OVERFLOW, POOL_SIZE, get_engine

    held = [get_engine(settings.database_url).connect() for _ in range(POOL_SIZE + POOL_OVERFLOW)]
    try:
        response = client.get("/v1/models", headers=auth(keys["a"]))  # waits POOL_TIMEOUT_SECONDS for one
    finally:
        for connection in held:
            connection.close()
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.get_json()["error"]["type"] == "service_unavailable"
    assert client.get("/v1/models", headers=auth(keys["a"])).status_code == 200
