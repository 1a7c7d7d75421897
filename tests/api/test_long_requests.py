"""Requests that hold a server thread for long (job event streams, completions waiting or streaming) are
limited per API process, so slow clients cannot take every thread: past the limit they get 503 with
Retry-After before anything is recorded, while short requests go on being served. Over real HTTP (a
threaded WSGI server on loopback); no worker runs, so jobs stay queued and streams stay open."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
