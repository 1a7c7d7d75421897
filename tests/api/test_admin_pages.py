"""The dashboard's other pages without a browser: webhooks with replay, workers and queues, fine-tunes with
their loss curve, and what they say when there is nothing to show."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
import redis

from shared.db import session_scope
from shared.models import Job, JobEvent, ModelRecord, WebhookAttempt, WebhookEndpoint, WebhookMessage, utcnow
from shared.workers import PREFIX, beat
from tests.api.test_admin_access import admin_login, seed_jobs
from tests.conftest import TINY


def failed_delivery(database_url: str, endpoint_status: str = "enabled") -> str:
    """An endpoint and a message to it that failed with a 500 after its retries."""
    with session_scope(database_url) as session:
        endpoint = WebhookEndpoint(
            id="we_" + uuid.uuid4().hex[:12],
            tenant_id="ten_hooks",
            url="https://hooks.example/canvas",
            events=["job.succeeded"],
            secret="whsec_x",
            status=endpoint_status,
        )
        message = WebhookMessage(
            id="msg_" + uuid.uuid4().hex,
            tenant_id="ten_hooks",
            endpoint_id=endpoint.id,
            url=endpoint.url,
            event_type="job.succeeded",
            payload={"type": "job.succeeded"},
            status="failed",
            attempts=5,
            last_status_code=500,
        )
        session.add_all([endpoint, message])
        session.flush()
        session.add(WebhookAttempt(message_id=message.id, attempt=5, status_code=500, error="HTTP 500"))
        return message.id


def test_webhooks_page_lists_failed_deliveries_and_replays_one(client, keys, settings) -> None:
    message_id = failed_delivery(settings.database_url)
    token = admin_login(client, keys["admin"])
    html = client.get("/admin/webhooks?status=failed").text
    assert "https://hooks.example/canvas" in html
    row = re.search(rf'<tr data-id="{message_id}" data-status="failed">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="num code">500</td>' in row and "HTTP 500" in row
    assert client.post(f"/admin/webhooks/deliveries/{message_id}/replay").status_code == 403  # no CSRF token
    response = client.post(f"/admin/webhooks/deliveries/{message_id}/replay", data={"csrf_token": token})
    assert response.status_code == 302
    with session_scope(settings.database_url) as session:
        message = session.get(WebhookMessage, message_id)
        assert (message.status, message.attempts) == ("pending", 0)
    assert message_id not in client.get("/admin/webhooks?status=failed").text


def test_replay_to_a_disabled_endpoint_says_to_enable_it(client, keys, settings) -> None:
    message_id = failed_delivery(settings.database_url, endpoint_status="disabled")
    token = admin_login(client, keys["admin"])
    response = client.post(f"/admin/webhooks/deliveries/{message_id}/replay", data={"csrf_token": token})
    assert response.status_code == 422
    assert "enable it" in response.text
    with session_scope(settings.database_url) as session:
        assert session.get(WebhookMessage, message_id).status == "failed"


def test_webhooks_page_empty(client, keys) -> None:
    admin_login(client, keys["admin"])
    html = client.get("/admin/webhooks").text
    assert "No endpoints. A tenant registers one with POST /v1/webhook_endpoints" in html
    assert "No deliveries." in html


@pytest.fixture
def queue_model(settings):
    """A registered base model that no worker serves, so its queue can be filled by hand."""
    name = "queued-" + uuid.uuid4().hex[:8]
    with session_scope(settings.database_url) as session:
        session.add(
            ModelRecord(
                name=name, path="/nowhere", canvas_length=32, max_positions=64, vocab_size=10, eos_token_ids=[1],
                pad_token_id=0,
            )
        )  # fmt: skip
    client = redis.Redis.from_url(settings.redis_url)
    yield name, client
    client.delete(f"gen.{name}", f"gen.{name}\x06\x169", PREFIX + name)
    with session_scope(settings.database_url) as session:
        session.delete(session.get(ModelRecord, name))


def test_workers_page_shows_heartbeats_queue_depths_and_the_last_hour(client, keys, settings, queue_model) -> None:
    name, redis_client = queue_model
    redis_client.rpush(f"gen.{name}", "a", "b")
    redis_client.rpush(f"gen.{name}\x06\x169", "c")  # a message at another priority step
    info = {"kind": "serve", "host": "gpu-host-7", "device": "NVIDIA H100", "gpu": True, "models": [name]}
    beat(redis_client, name, {**info, "rows_in_flight": 5, "rows_waiting": 2, "worker_id": "gpu-host-7:1"})
    now = utcnow()
    seed_jobs(settings.database_url, 3, now - timedelta(minutes=5), finished_at=now - timedelta(minutes=2),
              worker="gpu-host-7:1", stats={"output_tokens": 600, "run_ms": 1000.0})  # fmt: skip
    seed_jobs(settings.database_url, 1, now - timedelta(minutes=5), status="failed", finished_at=now)
    admin_login(client, keys["admin"])
    html = client.get("/admin/workers").text
    row = re.search(r'<tr data-kind="serve" data-worker-id="gpu-host-7:1">(.*?)</tr>', html, re.S).group(1)
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    assert cells[1:7] == ["serve", "gpu-host-7", "NVIDIA H100", name, "5 (+2 waiting)", "6.0"]  # 1800 tokens / 300 s
    assert re.search(r"[0-9] s ago", cells[7])
    assert re.search(rf'<tr data-queue="gen.{name}">.*?<td class="num">3</td>', html, re.S)
    assert "4 jobs finished, 1 failed" in html
    assert html.count('class="bar"') == 120  # a bar a minute: jobs finished, and the share that failed
    assert "<title>100</title>" in html  # the minute in which the one failed job finished: 100% failed


def test_workers_page_when_nothing_runs_and_when_redis_is_down(client, keys, settings, app) -> None:
    admin_login(client, keys["admin"])
    html = client.get("/admin/workers").text
    assert "No worker has sent a heartbeat" in html or "data-kind" in html  # e2e workers may share this Redis
    app.extensions["canvas.redis"] = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    html = client.get("/admin/workers").text
    assert "Redis does not answer" in html and "REDIS_URL" in html


def test_fine_tune_pages_show_the_loss_curve_checkpoints_and_result(client, keys, settings) -> None:
    (ft_id,) = seed_jobs(
        settings.database_url, 1, kind="fine_tune", status="running",
        params={"base_model": TINY, "method": "lora", "quantization": "none", "examples": 30,
                "hyperparameters": {"max_steps": 100, "checkpoint_every": 50}},
    )  # fmt: skip
    with session_scope(settings.database_url) as session:
        for step in range(1, 41):
            data = {"step": step, "loss": 5.0 - step * 0.1, **({"eval_loss": 4.0} if step % 20 == 0 else {})}
            session.add(JobEvent(job_id=ft_id, type="metrics", data=data, created_at=utcnow()))
    admin_login(client, keys["admin"])
    html = client.get(f"/admin/fine-tunes/{ft_id}").text
    points = re.search(r'data-series="train loss" points="([^"]+)"', html).group(1).split()
    assert len(points) == 40
    assert html.count('class="dot eval"') == 2
    assert "No checkpoint yet (one every 50 steps)" in html
    data = client.get(f"/admin/fine-tunes/{ft_id}/metrics.json").get_json()
    assert (data["status"], data["steps"], data["last"]["step"]) == ("running", 40, 40)
    assert data["svg"].startswith("<svg") and "train loss" in data["svg"]
    listing = client.get("/admin/fine-tunes").text
    assert f'<tr data-id="{ft_id}" data-status="running">' in listing and "40 / 100" in listing
    assert client.get("/admin/fine-tunes/job_nope").status_code == 404


def test_fine_tunes_page_empty(client, keys, settings) -> None:
    seed_jobs(settings.database_url, 2)  # generation jobs are not fine-tunes
    admin_login(client, keys["admin"])
    assert "No fine-tunes yet. Upload a dataset" in client.get("/admin/fine-tunes").text


def test_job_page_lists_its_deliveries(client, keys, settings) -> None:
    (job_id,) = seed_jobs(settings.database_url, 1)
    message_id = failed_delivery(settings.database_url)
    with session_scope(settings.database_url) as session:
        session.get(WebhookMessage, message_id).job_id = job_id
        assert session.get(Job, job_id) is not None
    admin_login(client, keys["admin"])
    html = client.get(f"/admin/jobs/{job_id}").text
    assert f'<tr data-id="{message_id}" data-status="failed">' in html
