"""Per-tenant submission limits at the API: 429 with Retry-After past the rate or the active-jobs cap,
nothing recorded for a refused request, other tenants and idempotent replays unaffected, and the rate
failing open when Redis does not answer."""

from __future__ import annotations

import time

import pytest

from tests.conftest import TINY, auth


def app_with(settings, **limits):
    from api.app import create_app

    return create_app(settings.with_(**limits)).test_client()


def submit(client, key: str, headers: dict | None = None, **body):
    return client.post(
        "/v1/jobs", json={"model": TINY, "prompt": "hi", **body}, headers={**auth(key), **(headers or {})}
    )


def job_count(client, key: str) -> int:
    return len(client.get("/v1/jobs?limit=100", headers=auth(key)).get_json()["data"])


def test_past_the_rate_a_submission_gets_429_with_retry_after(settings, keys) -> None:
    client = app_with(settings, rate_limit_per_minute=3, max_active_jobs=0)
    first = submit(client, keys["a"], headers={"Idempotency-Key": "k1"})
    assert [submit(client, keys["a"]).status_code for _ in range(2)] == [202, 202]
    refused = submit(client, keys["a"])
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    error = refused.get_json()["error"]
    assert error["type"] == "rate_limit_error" and "more than 3 submissions in a minute" in error["message"]
    assert job_count(client, keys["a"]) == 3  # the refused request recorded nothing
    replay = submit(client, keys["a"], headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 200 and replay.get_json()["id"] == first.get_json()["id"]
    assert submit(client, keys["b"]).status_code == 202  # another tenant has its own budget
    chat = {"model": TINY, "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=chat, headers=auth(keys["a"])).status_code == 429


def test_past_the_active_jobs_cap_a_submission_waits_for_one_to_finish(settings, keys) -> None:
    client = app_with(settings, rate_limit_per_minute=0, max_active_jobs=2)
    jobs = [submit(client, keys["a"]).get_json()["id"] for _ in range(2)]
    refused = submit(client, keys["a"])
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert "2 jobs are queued or running for this tenant" in refused.get_json()["error"]["message"]
    assert client.post(f"/v1/jobs/{jobs[0]}/cancel", headers=auth(keys["a"])).status_code == 200
    assert submit(client, keys["a"]).status_code == 202  # a queued job canceled: room for one more


def test_the_rate_fails_open_when_redis_does_not_answer(settings, keys) -> None:
    client = app_with(settings, rate_limit_per_minute=1, redis_url="redis://127.0.0.1:1/0")
    assert [submit(client, keys["a"]).status_code for _ in range(2)] == [202, 202]
    assert job_count(client, keys["a"]) == 2


def test_concurrent_submissions_never_exceed_the_active_jobs_cap(settings, keys) -> None:
    """Twelve submissions at once against a cap of 3: exactly 3 accepted, the rest refused with 429."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from api.app import create_app

    app = create_app(settings.with_(rate_limit_per_minute=0, max_active_jobs=3))
    start = Barrier(12)

    def one(_: int) -> int:
        client = app.test_client()
        start.wait()
        return submit(client, keys["a"]).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(one, range(12)))
    assert sorted(codes) == [202] * 3 + [429] * 9
    assert job_count(app.test_client(), keys["a"]) == 3


def test_the_rate_window_slides_and_a_refused_submission_does_not_extend_it(settings) -> None:
    """Against real Redis, with a two-second window: the third call in it is refused until the first
    call's two seconds have passed, however often it is retried; then exactly one more fits (the second
    call is still in the window for 0.8 s more: room for a slow machine)."""
    from api.app import create_app
    from api.limits import _check_rate
    from shared.errors import RateLimited

    app, tenant = create_app(settings), f"tenant-{time.time_ns()}"
    with app.app_context():
        _check_rate(tenant, 2, window=2.0)
        time.sleep(1.0)
        _check_rate(tenant, 2, window=2.0)
        for _ in range(3):  # retried while full: refused, with the wait until the first leaves (under 1 s)
            with pytest.raises(RateLimited) as refused:
                _check_rate(tenant, 2, window=2.0)
            assert refused.value.retry_after == 1
        time.sleep(1.2)  # the first has left the window; the second has not
        _check_rate(tenant, 2, window=2.0)
        with pytest.raises(RateLimited):
            _check_rate(tenant, 2, window=2.0)
