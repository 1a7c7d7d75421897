"""The worker processes as an orchestrator sees them: the supervisor restarts a worker that died, and a
worker that cannot serve its model exits at once with the reason, never taking a job from its queue."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import redis

from shared.contracts import generation_queue
from shared.queue import EXIT_CANNOT_START, make_celery
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import EmbeddedWorker, Worker
from worker.celery_app import create_worker_app

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def own_redis(settings, backend: str):
    """These settings on a Redis database of their own (no other test's worker takes their tasks)."""
    return settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 9}")


def children(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children()]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.1)


@pytest.mark.e2e
def test_the_supervisor_restarts_a_worker_that_died_and_stops_on_sigterm(settings, backend, tmp_path) -> None:
    log = tmp_path / "webhooks.log"
    worker = Worker(own_redis(settings, backend), None, log, role="webhooks").wait_ready()
    try:
        (first,) = children(worker.process.pid)
        os.kill(first, signal.SIGKILL)  # the OOM killer, a segfault
        wait_for(lambda: log.read_bytes().count(b" ready.") == 2, 30, "the worker restarted")
        (second,) = children(worker.process.pid)
        assert second != first
        assert b"exited with code 137" in log.read_bytes() and b"restarting it in 1 s" in log.read_bytes()
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(30) == 0  # a warm shutdown of its worker
        assert not psutil.pid_exists(second) or psutil.Process(second).status() == psutil.STATUS_ZOMBIE
    finally:
        worker.stop()


@pytest.mark.e2e
def test_a_worker_that_cannot_load_its_model_exits_with_the_reason_and_leaves_its_queue(
    settings, backend, tmp_path
) -> None:
    settings = own_redis(settings, backend)
    queue = generation_queue("unregistered")
    broker = redis.Redis.from_url(settings.redis_url)
    broker.delete(queue)
    make_celery(settings).send_task("canvas.generate", args=["job_waiting"], queue=queue)
    log = tmp_path / "serve.log"
    worker = Worker(settings, "unregistered", log)
    try:
        code = worker.process.wait(60)
    finally:
        worker.stop()
    assert code == EXIT_CANNOT_START  # the supervisor does not restart it: its orchestrator decides
    text = log.read_text()
    assert "the worker cannot start: models not in the registry: unregistered" in text
    assert "cannot start (see its log above): stopping the others" in text
    assert b" ready." not in log.read_bytes()
    assert broker.llen(queue) == 1  # the job's message is still there for a worker that can serve it
    broker.delete(queue)


def test_a_worker_without_a_gpu_refuses_a_model_too_large_for_the_cpu(settings, caplog) -> None:
    app = create_worker_app(settings.with_(worker_models=(TINY,), cpu_model_max_bytes=1000))
    with pytest.raises(RuntimeError, match="did not start"), EmbeddedWorker(app, [generation_queue(TINY)]):
        pass
    assert f"model {TINY} has 0.0 GiB of weights and this worker has no GPU" in caplog.text
    assert "CANVAS_CPU_MODEL_MAX_BYTES=1000" in caplog.text


def test_a_worker_pinned_to_a_gpu_that_torch_cannot_see_does_not_fall_back_to_the_cpu(
    settings, caplog, monkeypatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what `--gpus 0` pins; this machine has no CUDA
    app = create_worker_app(settings.with_(worker_models=(TINY,)))
    with pytest.raises(RuntimeError, match="did not start"), EmbeddedWorker(app, [generation_queue(TINY)]):
        pass
    assert "GPU 0 was asked for (CUDA_VISIBLE_DEVICES=0) but torch finds no CUDA device" in caplog.text
