"""A quantized model served like any other: the registry detects its method and size, the API reports them,
a real Celery worker loads it from the registry when it starts and runs jobs submitted through the API,
and a worker whose hardware cannot run the method does not start."""

from __future__ import annotations

import time

import pytest

from shared.contracts import generation_queue
from shared.db import session_scope
from shared.registry import register_model
from tests.conftest import TINY, auth
from tests.e2e.live import EmbeddedWorker
from worker.celery_app import create_worker_app
from worker.quantized.checkpoint import quantize_checkpoint
from worker.stack import base_models

NF4 = "tiny-nf4"
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the embedded default's database


@pytest.fixture
def registered(settings, nf4_tiny_dir):
    with session_scope(settings.database_url) as session:
        register_model(session, NF4, nf4_tiny_dir)
    return settings


def test_the_api_reports_each_models_quantization_and_weight_bytes(registered, client, keys, tiny_model_dir) -> None:
    quantized = client.get(f"/v1/models/{NF4}", headers=auth(keys["a"])).get_json()
    plain = client.get(f"/v1/models/{TINY}", headers=auth(keys["a"])).get_json()
    assert quantized["quantization"] == "nf4" and plain["quantization"] == "none"
    assert plain["weight_bytes"] == sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert 0 < quantized["weight_bytes"] < plain["weight_bytes"]
    listed = {m["id"]: m for m in client.get("/v1/models", headers=auth(keys["a"])).get_json()["data"]}
    assert listed[NF4]["quantization"] == "nf4"


def wait_done(client, key: str, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).get_json()
        if job["status"] in {"succeeded", "failed", "canceled", "expired"}:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']}")


@SQLITE
def test_a_worker_loads_a_quantized_model_from_the_registry_and_runs_its_jobs(registered, client, keys) -> None:
    app = create_worker_app(registered.with_(worker_models=(NF4,)))  # no host: it loads from the registry
    with EmbeddedWorker(app, [generation_queue(NF4)], concurrency=4):
        bodies = [
            {"kind": "generate", "model": NF4, "prompt": "quantized", "params": {"max_new_tokens": 40}},
            {"kind": "infill", "model": NF4, "prefix": "ab", "suffix": "yz", "hole_tokens": 6},
        ]
        generate, infill = (client.post("/v1/jobs", json=body, headers=auth(keys["a"])) for body in bodies)
        assert generate.status_code == infill.status_code == 202, (generate.get_json(), infill.get_json())
        jobs = [wait_done(client, keys["a"], r.get_json()["id"]) for r in (generate, infill)]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    assert 0 < len(jobs[0]["output"]["token_ids"]) <= 40


@SQLITE
def test_a_worker_whose_gpu_cannot_run_fp8_does_not_start(settings, tiny_model_dir, tmp_path, caplog) -> None:
    quantize_checkpoint(tiny_model_dir, tmp_path / "fp8", "fp8", device="cpu")
    with session_scope(settings.database_url) as session:
        register_model(session, "tiny-fp8", tmp_path / "fp8")
    app = create_worker_app(settings.with_(worker_models=("tiny-fp8",)))
    with pytest.raises(RuntimeError, match="did not start"), EmbeddedWorker(app, [generation_queue("tiny-fp8")]):
        pass
    assert "fp8 weights need a CUDA GPU of compute capability 8.9 or newer" in caplog.text


@SQLITE
def test_the_embedded_stack_serves_every_base_model(registered) -> None:
    with session_scope(registered.database_url) as session:
        assert {TINY, NF4} <= set(base_models(session))
