"""Metrics and logs as an operator collects them, after real jobs: Prometheus scrapes a worker process's port
and the API's /metrics (also under gunicorn, whose workers' counters add up), and with
CANVAS_LOG_FORMAT=json every log line is one JSON object naming the job it is about."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.contracts import TRAIN_QUEUE
from shared.local_redis import free_port
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import ROOT, ApiServer, Client, Worker, training_worker
from tests.e2e.receiver import Receiver

CELERY_NOTICE = "worker: Warm shutdown (MainProcess)"  # Celery prints it on stdout, not as a log line


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page: (name, labels) -> value."""
    text = requests.get(url, timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def own_redis(settings, backend: str, offset: int):
    return settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - offset}")


def json_lines(path: Path) -> list[dict]:
    """The log's lines, each parsed (a line that is not JSON fails the test), but Celery's notice."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and line.strip() != CELERY_NOTICE]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line in {path.name}: {line!r}")
    return parsed


def test_a_worker_process_serves_its_metrics_and_logs_json_lines_naming_the_job(
    settings, keys, backend, tmp_path
) -> None:
    port = free_port()
    settings = own_redis(settings, backend, 10).with_(metrics_port=port, log_format="json")
    log = tmp_path / "serve.log"
    with ApiServer(settings) as api:
        client = Client(api.url, keys["a"])
        worker = Worker(settings, TINY, log).wait_ready()  # `canvas worker serve`: its child gets the port
        try:
            jobs = [client.submit(model=TINY, prompt=p, params={"max_new_tokens": 8}) for p in ("a", "b")]
            assert all(client.wait(j["id"])["status"] == "succeeded" for j in jobs)
            samples = scrape(f"http://127.0.0.1:{port}/metrics")
        finally:
            worker.stop()

    assert value(samples, "canvas_jobs_finished_total", kind="generate", model=TINY, status="succeeded") == 2
    assert value(samples, "canvas_job_queue_seconds_count", kind="generate") == 2
    assert value(samples, "canvas_job_run_seconds_count", kind="generate") == 2
    assert value(samples, "canvas_tokens_per_forward_count") == 2
    assert value(samples, "canvas_engine_step_seconds_count") >= 2  # a tick at least per job
    assert ("canvas_engine_rows", frozenset({("model", TINY)})) in samples  # 0 now: the jobs are done

    lines = json_lines(log)
    assert any(line["message"].endswith(" ready.") for line in lines)
    tenants = set()
    for job in jobs:
        about = [line for line in lines if line.get("job_id") == job["id"]]
        assert about[-1]["message"] == f"job {job['id']} succeeded after {about[-1]['message'].split()[-2]} s"
        assert {(line["model"], line["attempt"]) for line in about} == {(TINY, 1)}
        tenants |= {line["tenant"] for line in about}
    assert len(tenants) == 1 and tenants.pop().startswith("ten_")  # key "a"'s tenant


def test_the_api_metrics_show_submissions_queue_depths_and_what_the_workers_did(live_api, settings, keys) -> None:
    """One process runs the API and the in-process workers here, so its /metrics shows both sides."""
    client = Client(live_api.url, keys["a"])
    # Messages an earlier test of this process left in the training queue (its jobs are gone) would count
    # in the depth read below.
    redis.Redis.from_url(settings.redis_url).delete(TRAIN_QUEUE)
    before = scrape(f"{live_api.url}/metrics")
    receiver = Receiver()
    try:
        hook = {"url": receiver.url + "/h"}
        job = client.submit(model=TINY, prompt="hi", params={"max_new_tokens": 4}, webhook=hook)
        data = {"purpose": "fine-tune"}
        lesson = io.BytesIO(b'{"prompt": "a:", "completion": "b"}\n')
        uploaded = client.http.post(f"{client.url}/v1/files", data=data, files={"file": ("l.jsonl", lesson)}).json()
        body = {
            "base_model": TINY,
            "training_file": uploaded["id"],
            "method": "full",
            "hyperparameters": {"max_steps": 3},
        }
        ft = client.http.post(f"{client.url}/v1/fine_tunes", json=body, timeout=30).json()
        assert client.wait(job["id"])["status"] == "succeeded"
        receiver.wait_for("/h", 1)
        waiting = scrape(f"{live_api.url}/metrics")  # no training worker yet: the fine-tune waits in its queue
        with training_worker(settings):
            deadline = time.monotonic() + 60
            while client.get(ft["id"])["status"] not in {"succeeded", "failed"}:
                assert time.monotonic() < deadline, "the fine-tune did not finish"
                time.sleep(0.1)
        after = scrape(f"{live_api.url}/metrics")
    finally:
        receiver.close()
        redis.Redis.from_url(settings.redis_url).delete(TRAIN_QUEUE)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert client.get(ft["id"])["status"] == "succeeded"
    assert moved("canvas_jobs_submitted_total", kind="generate", model=TINY) == 1
    assert moved("canvas_jobs_submitted_total", kind="fine_tune", model=TINY) == 1
    assert moved("canvas_jobs_finished_total", kind="generate", model=TINY, status="succeeded") == 1
    assert moved("canvas_jobs_finished_total", kind="fine_tune", model=TINY, status="succeeded") == 1
    assert moved("canvas_fine_tune_steps_total") == 3
    assert moved("canvas_webhook_deliveries_total", outcome="delivered") >= 1
    assert value(waiting, "canvas_queue_depth", queue=TRAIN_QUEUE) == 1
    assert value(after, "canvas_queue_depth", queue=TRAIN_QUEUE) == 0
    assert ("canvas_queue_depth", frozenset({("queue", f"gen.{TINY}")})) in after


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_under_gunicorn_the_workers_counters_add_up_and_every_line_is_json(settings, keys, backend, tmp_path) -> None:
    settings = own_redis(settings, backend, 10).with_(log_format="json", api_sweeper=False)
    port = free_port()
    config = tmp_path / "gunicorn_conf.py"  # what a deployment's gunicorn config adds for JSON lines
    config.write_text("from shared.logs import gunicorn_logconfig\nlogconfig_dict = gunicorn_logconfig('json')\n")
    (tmp_path / "prometheus").mkdir()
    env = {**os.environ, **settings.to_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
    command = [sys.executable, "-m", "gunicorn", "-c", str(config), "--workers", "2", "--worker-class", "gthread",
               "--threads", "4", "--bind", f"127.0.0.1:{port}", "--access-logfile", "-", "api.wsgi:app"]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still loading the app
                pass
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        client = Client(url, keys["a"])
        jobs = [client.submit(model=TINY, prompt=str(i), params={"max_new_tokens": 4}) for i in range(6)]
        scrapes = [scrape(f"{url}/metrics") for _ in range(4)]  # served by either worker: each sees every count
    finally:
        server.terminate()
        server.wait(30)
        redis.Redis.from_url(settings.redis_url).delete(f"gen.{TINY}")

    for samples in scrapes:
        assert value(samples, "canvas_jobs_submitted_total", kind="generate", model=TINY) == 6
        assert value(samples, "canvas_queue_depth", queue=f"gen.{TINY}") == 6  # no worker: all six wait
    lines = json_lines(log)
    accepted = {line["job_id"]: line for line in lines if " accepted: " in line["message"]}
    assert set(accepted) == {job["id"] for job in jobs}
    assert len({line["tenant"] for line in accepted.values()}) == 1  # key "a"'s tenant, on every line
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)
    assert any(line["logger"] == "gunicorn.access" and "/v1/jobs" in line["message"] for line in lines)
