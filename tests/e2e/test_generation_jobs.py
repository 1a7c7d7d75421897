"""End to end: HTTP client -> API server -> Redis -> Celery worker -> SQL. A job's whole path and a cancel
run on SQLite too, the embedded default."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from shared.contracts import GENERATE_TASK, generation_queue
from shared.queue import make_celery
from tests.conftest import TINY
from tests.e2e.live import Client, EmbeddedWorker, FinishedTasks
from tests.reference_generation import cut_output, generate_kwargs
from worker.celery_app import create_worker_app
from worker.tiny import EOS_ID

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@BOTH
def test_a_generation_job_runs_and_matches_model_generate(live_api, keys, tiny_model_dir) -> None:
    client = Client(live_api.url, keys["a"])
    job = client.submit(model=TINY, prompt="The sky is", params={"max_new_tokens": 40, "max_denoising_steps": 12})
    done = client.wait(job["id"])
    assert done["status"] == "succeeded", done
    out, stats = done["output"], done["stats"]
    assert out["finish_reason"] in {"eos", "length"}
    assert len(out["token_ids"]) <= 40
    assert stats["canvases"] >= 1
    assert 1 <= stats["denoising_steps"] <= 12 * stats["canvases"]
    assert stats["tokens_per_forward"] > 0
    assert stats["queue_ms"] >= 0
    assert stats["run_ms"] > 0
    assert [e["status"] for e in done["timeline"]] == ["queued", "running", "succeeded"]
    assert done["started_at"] and done["finished_at"]

    # The same request run directly through transformers gives the same tokens and text.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()
    prompt = tokenizer("The sky is").input_ids
    torch.manual_seed(done["params"]["seed"])
    with torch.inference_mode():
        direct = model.generate(torch.tensor([prompt]), **generate_kwargs(done["params"]))
    expected, reason = cut_output(direct.sequences[0, len(prompt) :].tolist(), 40, {EOS_ID})
    assert out["token_ids"] == expected
    assert out["finish_reason"] == reason
    assert out["text"] == tokenizer.decode(expected, skip_special_tokens=True)


def test_messages_and_input_ids_jobs_run(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    a = client.submit(model=TINY, messages=[{"role": "user", "content": "hi"}], params={"max_new_tokens": 8})
    b = client.submit(model=TINY, input_ids=[2, 90, 91], params={"max_new_tokens": 8, "seed": 5})
    assert client.wait(a["id"])["status"] == "succeeded"
    assert client.wait(b["id"])["status"] == "succeeded"


# One canvas that never converges early (no stable argmax for 4096 steps, entropy never below 1e-9): seconds of work.
LONG = {"max_new_tokens": 32, "max_denoising_steps": 4000, "stability_threshold": 4096, "confidence_threshold": 1e-9}


@BOTH
def test_cancel_a_running_job(live_api, keys) -> None:
    client = Client(live_api.url, keys["a"])
    job = client.submit(model=TINY, prompt="long", params=LONG)
    client.wait(job["id"], {"running"})
    response = client.cancel(job["id"])
    assert response.status_code == 200
    assert response.json()["status"] in {"canceling", "canceled"}
    asked = time.monotonic()
    done = client.wait(job["id"], timeout=30)
    assert done["status"] == "canceled"
    assert done["output"]["finish_reason"] == "canceled"
    assert time.monotonic() - asked < 10  # one denoising step is milliseconds; generous for a loaded CI box
    assert [e["status"] for e in done["timeline"]] == ["queued", "running", "canceling", "canceled"]


def test_a_duplicated_delivery_runs_once(live_api, keys, settings) -> None:
    client = Client(live_api.url, keys["a"])
    with FinishedTasks() as tasks:
        job = client.submit(model=TINY, prompt="once", params={"max_new_tokens": 16})
        # Deliver the same job a second time, as a broker redelivery would.
        make_celery(settings).send_task(GENERATE_TASK, args=[job["id"]], queue=generation_queue(TINY))
        # Both deliveries have run in the (in-process) worker: one ran the job, the other did nothing.
        assert sorted(tasks.wait(GENERATE_TASK, [job["id"]], 2)) == ["skipped", "succeeded"]
    done = client.get(job["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert [e["status"] for e in done["timeline"]] == ["queued", "running", "succeeded"]


def test_a_worker_that_cannot_load_its_models_does_not_start(settings, caplog) -> None:
    """A worker whose model is not registered stops before it takes a job (it would fail every job sent to
    it), and says why."""
    app = create_worker_app(settings.with_(worker_models=(TINY, "unregistered")))
    with pytest.raises(RuntimeError, match="did not start"), EmbeddedWorker(app, [generation_queue("unregistered")]):
        pass
    assert "models not in the registry: unregistered (add them: canvas models add)" in caplog.text
