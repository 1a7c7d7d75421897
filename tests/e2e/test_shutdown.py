"""A generation worker's graceful shutdown, as a rollout or `docker stop` does it: SIGTERM to
`canvas worker serve`. The job that can finish within the grace period finishes; the one that cannot goes
back to the queue at once, without spending one of its attempts, and another worker takes it."""

from __future__ import annotations

import redis

from shared.workers import live_workers
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import ApiServer, Client, Worker, serving_worker
from tests.e2e.test_generation_jobs import LONG

SHORT = {**LONG, "max_denoising_steps": 300}  # about a second on this CPU


def test_sigterm_lets_running_jobs_finish_and_requeues_the_rest_without_spending_an_attempt(
    settings, keys, backend, tmp_path, model_host
) -> None:
    settings = settings.with_(
        redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 8}",  # no other worker here
        shutdown_grace_seconds=3.0,
    )
    with ApiServer(settings) as api:
        client = Client(api.url, keys["a"])
        worker = Worker(settings, TINY, tmp_path / "serve.log").wait_ready()
        try:
            long = client.submit(model=TINY, prompt="long", params=LONG)  # many seconds: past the grace period
            short = client.submit(model=TINY, prompt="short", params=SHORT)
            client.wait(long["id"], {"running"})
            client.wait(short["id"], {"running", "succeeded"})
            worker.process.terminate()  # SIGTERM to the supervisor, as an orchestrator sends it
            assert worker.process.wait(30) == 0
        finally:
            worker.stop()
        assert client.get(short["id"])["status"] == "succeeded"
        requeued = client.get(long["id"])
        assert (requeued["status"], requeued["attempts"]) == ("queued", 0)
        back = requeued["timeline"][-1]
        assert back["status"] == "queued" and back["data"]["reason"] == "worker shutting down"
        assert not live_workers(redis.Redis.from_url(settings.redis_url))  # its heartbeat left with it

        with serving_worker(settings, model_host):  # the message is back on the queue: another worker takes it
            client.wait(long["id"], {"running"}, timeout=30)
            assert client.cancel(long["id"]).status_code == 200
            done = client.wait(long["id"], timeout=30)
    assert done["status"] == "canceled"
    assert done["attempts"] == 1  # the shutdown did not spend one
    assert [e["status"] for e in done["timeline"]] == [
        "queued",
        "running",
        "queued",
        "running",
        "canceling",
        "canceled",
    ]
    log = (tmp_path / "serve.log").read_text()
    assert "requeueing 1 job(s) still running after" in log
