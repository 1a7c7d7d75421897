"""Workers' graceful shutdown, as a rollout or `docker stop` does it: SIGTERM to `canvas worker serve` or
`canvas worker train`. The generation job that can finish within the grace period finishes; the one that
cannot goes back to the queue at once, without spending one of its attempts, and another worker takes it.
A fine-tune goes back at its next step and resumes from its last checkpoint."""

from __future__ import annotations

import time

import redis

from shared.workers import live_workers
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import ApiServer, Client, Worker, serving_worker, training_worker
from tests.e2e.test_fine_tunes import dataset, fine_tune, metrics, upload, wait_fine_tune
from tests.e2e.test_generation_jobs import LONG

SHORT = {**LONG, "max_denoising_steps": 100}  # a fraction of a second on a CPU; LONG is forty times longer
GRACE_S = 6.0  # SHORT finishes well within it on a busy 2-core machine; LONG does not


def own_redis(settings, backend: str):
    """These settings on a Redis database of their own: no other test's worker takes their tasks."""
    return settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 8}")


def test_sigterm_lets_running_jobs_finish_and_requeues_the_rest_without_spending_an_attempt(
    settings, keys, backend, tmp_path, model_host
) -> None:
    settings = own_redis(settings, backend).with_(shutdown_grace_seconds=GRACE_S)
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


def test_sigterm_sends_a_running_fine_tune_back_to_resume_from_its_last_checkpoint(
    settings, keys, backend, tmp_path
) -> None:
    settings = own_redis(settings, backend)
    hp = {"max_steps": 100_000, "learning_rate": 3e-3, "batch_size": 4, "checkpoint_every": 3, "warmup_steps": 2}
    with ApiServer(settings) as api:
        client = Client(api.url, keys["a"])
        worker = Worker(settings, None, tmp_path / "train.log", role="train").wait_ready()
        try:
            ft = fine_tune(client, training_file=upload(client, dataset("copy")), method="full", hyperparameters=hp)
            wait_fine_tune(client, ft["id"], {"running"})
            while len(metrics(client, ft["id"])) < 4:  # past its first checkpoint (step 3)
                time.sleep(0.05)
            worker.process.terminate()
            assert worker.process.wait(30) == 0  # at its next step, not after 100,000 of them
        finally:
            worker.stop()
        requeued = client.get(ft["id"])
        assert (requeued["status"], requeued["attempts"]) == ("queued", 0)
        assert requeued["timeline"][-1]["data"]["reason"] == "worker shutting down"
        stopped_at = metrics(client, ft["id"])[-1]["step"]

        with training_worker(settings):  # another worker takes it from the queue, from its last checkpoint
            deadline = time.monotonic() + 60
            while metrics(client, ft["id"])[-1]["step"] <= stopped_at:
                assert time.monotonic() < deadline, "the fine-tune did not resume"
                time.sleep(0.05)
            client.http.post(f"{api.url}/v1/fine_tunes/{ft['id']}/cancel", timeout=10)
            done = wait_fine_tune(client, ft["id"], {"canceled"}, timeout=30)
        steps = [e["step"] for e in metrics(client, ft["id"])]
    assert done["attempts"] == 1
    resumed_from = stopped_at - stopped_at % 3  # the last checkpoint; the steps after it ran again
    assert steps[: stopped_at + 1] == [*range(1, stopped_at + 1), resumed_from + 1]
