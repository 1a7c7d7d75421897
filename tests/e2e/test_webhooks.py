"""Webhook delivery end to end: a real receiver checks every signature with the `standardwebhooks`
package; retries, 410, timeouts, Retry-After, replay, and a webhook worker killed mid-delivery."""

from __future__ import annotations

import json
import time

import pytest
from standardwebhooks import Webhook

from shared import sealing
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import ApiServer, Client, Worker, serving_worker, webhook_worker
from tests.e2e.receiver import Answer, Receiver


def verified(secret: str, received) -> dict:
    """The payload, after the official library checked the signature and the timestamp."""
    return Webhook(secret).verify(received.body, received.headers)


def endpoint(client: Client, url: str, events: list[str] | None = None) -> dict:
    body = {"url": url, **({"events": events} if events else {})}
    response = client.http.post(f"{client.url}/v1/webhook_endpoints", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(client: Client, endpoint_id: str) -> list[dict]:
    return client.http.get(f"{client.url}/v1/webhook_endpoints/{endpoint_id}/deliveries", timeout=10).json()["data"]


def wait_delivery(client: Client, endpoint_id: str, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in deliveries(client, endpoint_id) if d["status"] == status]
        if found:
            return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"no {status} delivery: {deliveries(client, endpoint_id)}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_events_arrive_signed_and_in_order(live_api, keys, receiver) -> None:
    client = Client(live_api.url, keys["a"])
    ep = endpoint(client, receiver.script("/all"), ["job.started", "job.canvas", "job.succeeded"])
    job = client.submit(model=TINY, prompt="hook", params={"max_new_tokens": 70, "max_denoising_steps": 4})
    done = client.wait(job["id"])
    canvases = done["stats"]["canvases"]
    received = receiver.wait_for("/all", 2 + canvases)
    payloads = [verified(ep["secret"], r) for r in received]
    assert [p["type"] for p in payloads] == ["job.started"] + ["job.canvas"] * canvases + ["job.succeeded"]
    assert payloads[-1]["data"]["id"] == job["id"]
    assert payloads[-1]["data"]["output"] == done["output"]
    assert "".join(p["data"]["text"] for p in payloads[1:-1]) == done["output"]["text"]
    assert len({r.headers["webhook-id"] for r in received}) == len(received)
    deadline = time.monotonic() + 30  # the worker records the answer just after the receiver has the request
    while any(d["status"] != "delivered" for d in deliveries(client, ep["id"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [d["status"] for d in deliveries(client, ep["id"])] == ["delivered"] * len(received)
    per_job = client.http.get(f"{live_api.url}/v1/jobs/{job['id']}/deliveries", timeout=10).json()["data"]
    assert len(per_job) == len(received)


def test_a_jobs_own_webhook_is_signed_with_the_tenant_secret(live_api, keys, receiver) -> None:
    client = Client(live_api.url, keys["a"])
    secret = client.http.get(f"{live_api.url}/v1/webhook_secret", timeout=10).json()["secret"]
    job = client.submit(
        model=TINY, prompt="own", params={"max_new_tokens": 8}, webhook={"url": receiver.script("/own")}
    )
    [received] = receiver.wait_for("/own", 1)
    payload = verified(secret, received)
    assert (payload["type"], payload["data"]["id"]) == ("job.succeeded", job["id"])
    assert set(json.loads(received.body)) == {"type", "timestamp", "data"}


def test_a_failing_receiver_gets_the_message_after_retries_with_one_webhook_id(live_api, keys, receiver) -> None:
    client = Client(live_api.url, keys["a"])
    url = receiver.script("/flaky", Answer(500), Answer(502), Answer(200))
    ep = endpoint(client, url)
    client.wait(client.submit(model=TINY, prompt="retry", params={"max_new_tokens": 8})["id"])
    received = receiver.wait_for("/flaky", 3)
    assert len({r.headers["webhook-id"] for r in received}) == 1
    for r in received:
        verified(ep["secret"], r)
    delivery = wait_delivery(client, ep["id"], "delivered")
    assert [a["status_code"] for a in delivery["log"]] == [500, 502, 200]
    assert [a["attempt"] for a in delivery["log"]] == [1, 2, 3]
    assert all(a["latency_ms"] is not None for a in delivery["log"])


def test_410_disables_the_endpoint(live_api, keys, receiver) -> None:
    client = Client(live_api.url, keys["a"])
    ep = endpoint(client, receiver.script("/gone", Answer(410)))
    client.wait(client.submit(model=TINY, prompt="gone", params={"max_new_tokens": 8})["id"])
    delivery = wait_delivery(client, ep["id"], "failed")
    assert delivery["log"][-1]["status_code"] == 410
    state = client.http.get(f"{live_api.url}/v1/webhook_endpoints/{ep['id']}", timeout=10).json()
    assert state["status"] == "disabled"
    assert "410" in state["disabled_reason"]


def test_a_slow_receiver_times_out_and_is_retried(live_api, keys, receiver) -> None:
    client = Client(live_api.url, keys["a"])
    ep = endpoint(client, receiver.script("/slow", Answer(200, delay=6.0), Answer(200)))
    client.wait(client.submit(model=TINY, prompt="slow", params={"max_new_tokens": 8})["id"])
    delivery = wait_delivery(client, ep["id"], "delivered")
    assert "Timeout" in delivery["log"][0]["error"]
    assert delivery["log"][0]["status_code"] is None
    assert delivery["log"][-1]["status_code"] == 200


def test_retry_after_is_honoured(live_api, keys, receiver) -> None:
    client = Client(live_api.url, keys["a"])
    endpoint(client, receiver.script("/later", Answer(503, headers={"Retry-After": "3"}), Answer(200)))
    client.wait(client.submit(model=TINY, prompt="later", params={"max_new_tokens": 8})["id"])
    first, second = receiver.wait_for("/later", 2)
    assert second.at - first.at >= 2.9  # the schedule says 0.3 s; the receiver asked for 3


def test_a_failed_delivery_can_be_replayed(live_api, keys, receiver) -> None:
    client = Client(live_api.url, keys["a"])
    ep = endpoint(client, receiver.script("/down", *[Answer(500)] * 5))
    client.wait(client.submit(model=TINY, prompt="replay", params={"max_new_tokens": 8})["id"])
    failed = wait_delivery(client, ep["id"], "failed")
    assert len(failed["log"]) == 5  # the first try and four retries of the test schedule
    replay = client.http.post(
        f"{live_api.url}/v1/webhook_endpoints/{ep['id']}/deliveries/{failed['id']}/replay", timeout=10
    )
    assert replay.status_code == 200
    delivered = wait_delivery(client, ep["id"], "delivered")
    assert delivered["id"] == failed["id"]
    assert receiver.at("/down")[-1].headers["webhook-id"] == failed["id"]


def test_killing_the_webhook_worker_mid_delivery_loses_nothing(settings, keys, backend, tmp_path, model_host) -> None:
    # Its own Redis database and workers: the webhook worker that is killed is a process; the generation
    # worker and the webhook worker that takes over run in this process.
    settings = settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 4}")
    receiver = Receiver()
    first = Worker(settings, None, tmp_path / "hooks1.log").wait_ready()
    try:
        with serving_worker(settings, model_host), ApiServer(settings) as api:
            client = Client(api.url, keys["a"])
            ep = endpoint(client, receiver.script("/hang", Answer(200, delay=30.0), Answer(200)))
            client.wait(client.submit(model=TINY, prompt="crash", params={"max_new_tokens": 8})["id"])
            receiver.wait_for("/hang", 1)
            first.kill()  # mid-delivery: the receiver holds the request
            with webhook_worker(settings):
                delivery = wait_delivery(client, ep["id"], "delivered")
    finally:
        first.stop()
        receiver.close()
    hung, retried = receiver.at("/hang")[:2]
    assert hung.headers["webhook-id"] == retried.headers["webhook-id"] == delivery["id"]
    verified(ep["secret"], retried)
    # The killed attempt counts: the sweeper logged it when it recovered the message.
    assert [(a["attempt"], a["status_code"]) for a in delivery["log"]] == [(1, None), (2, 200)]
    assert "without a result within its lease" in delivery["log"][0]["error"]


def test_a_generation_worker_without_the_sealing_key_runs_jobs_of_a_tenant_with_an_endpoint(
    settings, keys, backend, tmp_path
) -> None:
    """Only the API (which shows secrets) and the webhook worker (which signs) hold the sealing key. The
    generation worker, a process of its own without it, finds the job's receivers without reading their
    secrets (before: every job of this tenant failed there, unable to unseal the endpoint's secret)."""
    key = sealing.new_key()
    sealed = settings.with_(
        webhook_sealing_keys=key, redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 5}"
    )
    receiver = Receiver()
    generation = Worker(sealed.with_(webhook_sealing_keys=""), TINY, tmp_path / "serve.log").wait_ready()
    try:
        with webhook_worker(sealed), ApiServer(sealed) as api:  # the API configures the key in this process
            client = Client(api.url, keys["a"])
            ep = endpoint(client, receiver.script("/sealed"), ["job.started", "job.succeeded"])
            job = client.submit(model=TINY, prompt="keyless", params={"max_new_tokens": 8})
            assert client.wait(job["id"])["status"] == "succeeded"
            received = receiver.wait_for("/sealed", 2)
    finally:
        generation.stop()
        receiver.close()
        sealing.configure("")
    assert [verified(ep["secret"], r)["type"] for r in received] == ["job.started", "job.succeeded"]
    assert b"sealed:v1:" not in b"".join(r.body for r in received)


def test_callbacks_go_out_at_once_not_at_the_sweepers_next_pass(
    settings, keys, receiver, live_worker, live_webhook_worker
) -> None:
    """With the sweeper's period at a minute, a job's two callbacks still arrive within seconds: each
    message wakes the sweeper's dispatch when it is written, and so does the delivery of job.started,
    which the job's job.succeeded waits behind (order per job)."""
    slow = settings.with_(sweep_seconds=60.0)
    with ApiServer(slow) as api:
        client = Client(api.url, keys["a"])
        endpoint(client, receiver.script("/prompt"), ["job.started", "job.succeeded"])
        started = time.monotonic()
        job = client.submit(model=TINY, prompt="prompt", params={"max_new_tokens": 8})
        received = receiver.wait_for("/prompt", 2, timeout=30)
        took = time.monotonic() - started
        assert client.wait(job["id"])["status"] == "succeeded"
    assert [json.loads(r.body)["type"] for r in received] == ["job.started", "job.succeeded"]
    assert took < 15, f"{took:.1f} s: the callbacks waited for a sweep"
