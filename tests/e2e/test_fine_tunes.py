"""Fine-tuning end to end on the CPU (full on the tiny model, LoRA on the shipped demo model): a real
training worker, the API, and generation jobs on the result. Training runs take one to five minutes
each, so these run on PostgreSQL only."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.live import ApiServer, Client, Worker

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

rng = random.Random(7)
WORDS = sorted({"".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(4)) for _ in range(30)})[:30]


def dataset(task: str) -> bytes:
    """30 pairs a random model cannot know: a word and its reversal (or the word itself)."""
    rows = [{"prompt": f"{w}:", "completion": w[::-1] if task == "reverse" else w} for w in WORDS]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


BASE = "tiny16"  # a 16-token canvas: the tiny model learns these pairs in a few hundred CPU steps
# LoRA needs a base that has learned something (docs/benchmarks.md: on the random tiny base the frozen
# embeddings, tied to the lm_head, cap the logits): the shipped demo model, trained by our own pipeline.
TRAINED = "canvas-demo"
TRAINED_PATH = Path(__file__).resolve().parents[2] / "models" / TRAINED


@pytest.fixture(scope="module")
def train_worker(base_settings, tmp_path_factory) -> Iterator[Worker]:
    """A training worker, and a serving worker for the base model of these tests and its fine-tunes."""
    from shared.db import session_scope
    from shared.registry import register_model
    from worker.tiny import make_tiny

    directory = make_tiny(tmp_path_factory.mktemp("models") / BASE, seed=0, canvas_length=16)
    with session_scope(base_settings.database_url) as session:
        register_model(session, BASE, directory)
        register_model(session, TRAINED, TRAINED_PATH)
    logs = tmp_path_factory.mktemp("logs")
    worker = Worker(base_settings, None, logs / "train.log", role="train").wait_ready()
    serving = Worker(base_settings, f"{BASE},{TRAINED}", logs / "serve.log").wait_ready()
    yield worker
    serving.stop()
    worker.stop()


def upload(client: Client, content: bytes) -> str:
    files = {"file": ("train.jsonl", io.BytesIO(content))}
    response = client.http.post(f"{client.url}/v1/files", data={"purpose": "fine-tune"}, files=files, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def fine_tune(client: Client, **body) -> dict:
    body = {"base_model": BASE, **body}
    response = client.http.post(f"{client.url}/v1/fine_tunes", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def get(client: Client, path: str) -> dict:
    return client.http.get(f"{client.url}{path}", timeout=30).json()


def wait_fine_tune(client: Client, ft_id: str, statuses: set[str], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ft = get(client, f"/v1/fine_tunes/{ft_id}")
        if ft["status"] in statuses:
            return ft
        time.sleep(0.5)
    raise TimeoutError(f"fine-tune {ft_id} still {ft['status']}")


def metrics(client: Client, ft_id: str) -> list[dict]:
    return [e for e in get(client, f"/v1/fine_tunes/{ft_id}/events")["data"] if e["type"] == "metrics"]


def loss_drop(events: list[dict], key: str = "diffusion_loss") -> float:
    first = sum(e[key] for e in events[:10]) / 10
    last = sum(e[key] for e in events[-10:]) / 10
    return 1 - last / first


def exact_answers(client: Client, model: str, expected: dict[str, str]) -> int:
    jobs = {w: client.submit(model=model, prompt=f"{w}:", params={"max_new_tokens": 16, "seed": 1}) for w in expected}
    return sum(client.wait(job["id"])["output"]["text"] == expected[w] for w, job in jobs.items())


def test_full_fine_tuning_learns_the_data_and_the_result_is_a_model(live_api, keys, train_worker) -> None:
    client = Client(live_api.url, keys["a"])
    ft = fine_tune(
        client,
        training_file=upload(client, dataset("copy")),
        method="full",
        seed=1,
        suffix="copy",
        # 400 steps sit on the edge of learning the copy (2026-11-27, this CPU: 0/30 exact, loss 0.64, while
        # an earlier environment got 27+); 800 steps give 28/30 (loss 0.19), with room to spare.
        hyperparameters={
            "max_steps": 800,
            "learning_rate": 3e-3,
            "batch_size": 8,
            "warmup_steps": 20,
            "checkpoint_every": 200,
        },
    )
    done = wait_fine_tune(client, ft["id"], {"succeeded", "failed", "canceled"})
    assert done["status"] == "succeeded", done
    assert done["result_model"] == f"{BASE}:copy:{ft['id']}"
    events = metrics(client, ft["id"])
    assert [e["step"] for e in events] == list(range(1, 801))
    assert loss_drop(events) >= 0.8
    assert [c["step"] for c in get(client, f"/v1/fine_tunes/{ft['id']}/checkpoints")["data"]] == [200, 400, 600]
    models = [m["id"] for m in get(client, "/v1/models")["data"]]
    assert done["result_model"] in models
    assert exact_answers(client, done["result_model"], {w: w for w in WORDS}) >= 27


def adapter_outputs(settings, model_name: str, prompts: list[list[int]]) -> list[list[int]]:
    """What one adapter answers when it runs alone, in this process, on a fresh copy of the base."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from shared.db import session_scope
    from shared.models import ModelRecord
    from worker.engine import Engine, Request, SamplingParams
    from worker.training.lora import load_adapter

    with session_scope(settings.database_url) as session:
        record = session.get(ModelRecord, model_name)
        path, base_path = record.adapter_path, record.path
    engine = Engine(DiffusionGemmaForBlockDiffusion.from_pretrained(base_path).eval(), max_rows=32)
    engine.add_adapter(model_name, lambda model: load_adapter(model, path, model_name))
    handles = [
        engine.submit(
            Request(f"r{i}", tuple(p), SamplingParams(max_new_tokens=16, seed=1), frozenset({1}), adapter=model_name)
        )
        for i, p in enumerate(prompts)
    ]
    engine.run_until_idle()
    return [h.wait(0).token_ids for h in handles]


def test_two_lora_adapters_learn_their_data_and_are_served_side_by_side(live_api, keys, train_worker, settings) -> None:
    client = Client(live_api.url, keys["a"])
    hp = {
        "max_steps": 600,
        "learning_rate": 2e-3,
        "batch_size": 8,
        "lora_rank": 16,
        "lora_alpha": 32,
        "warmup_steps": 20,
        "checkpoint_every": 1000,
    }
    common = {"base_model": TRAINED, "method": "lora", "hyperparameters": hp}
    rev = fine_tune(client, training_file=upload(client, dataset("reverse")), seed=2, suffix="rev", **common)
    copy = fine_tune(client, training_file=upload(client, dataset("copy")), seed=3, suffix="copy", **common)
    rev, copy = (wait_fine_tune(client, f["id"], {"succeeded", "failed"}, timeout=1500) for f in (rev, copy))
    assert (rev["status"], copy["status"]) == ("succeeded", "succeeded"), (rev, copy)
    for ft, task in ((rev, "reverse"), (copy, "copy")):
        assert loss_drop(metrics(client, ft["id"])) >= 0.8
        expected = {w: w[::-1] if task == "reverse" else w for w in WORDS}
        assert exact_answers(client, ft["result_model"], expected) >= 27  # 90% of the 30 completions
    assert get(client, f"/v1/models/{rev['result_model']}")["base_model"] == TRAINED
    other = Client(live_api.url, keys["b"])
    assert other.http.get(f"{live_api.url}/v1/models/{rev['result_model']}", timeout=10).status_code == 404

    # Both adapters at once on one worker, their jobs interleaved: each answers as it does alone.
    jobs = []
    for w in WORDS[:12]:
        for model in (rev["result_model"], copy["result_model"]):
            jobs.append((model, client.submit(model=model, prompt=f"{w}:", params={"max_new_tokens": 16, "seed": 1})))
    served = {(m, j["id"]): client.wait(j["id"])["output"]["token_ids"] for m, j in jobs}
    from shared.db import session_scope
    from shared.models import Job

    with session_scope(settings.database_url) as session:
        ids = {j["id"]: list(session.get(Job, j["id"]).input_ids) for _m, j in jobs}
    for model in (rev["result_model"], copy["result_model"]):
        mine = [j["id"] for m, j in jobs if m == model]
        alone = adapter_outputs(settings, model, [ids[i] for i in mine])
        assert [served[(model, i)] for i in mine] == alone


def test_cancel_stops_training_within_a_step(live_api, keys, train_worker) -> None:
    client = Client(live_api.url, keys["a"])
    ft = fine_tune(client, training_file=upload(client, dataset("copy")), hyperparameters={"max_steps": 100_000})
    deadline = time.monotonic() + 120
    while len(metrics(client, ft["id"])) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.http.post(f"{live_api.url}/v1/fine_tunes/{ft['id']}/cancel", timeout=10).status_code == 200
    done = wait_fine_tune(client, ft["id"], {"canceled"}, timeout=30)
    assert done["status"] == "canceled"
    steps = len(metrics(client, ft["id"]))
    time.sleep(1.5)
    assert len(metrics(client, ft["id"])) == steps


def test_a_killed_training_worker_resumes_from_its_checkpoint(settings, keys, backend, tmp_path, train_worker) -> None:
    hp = {"max_steps": 40, "learning_rate": 3e-3, "batch_size": 4, "checkpoint_every": 10, "warmup_steps": 5}
    data = dataset("copy")
    with ApiServer(settings) as api:
        client = Client(api.url, keys["a"])
        baseline = fine_tune(client, training_file=upload(client, data), method="full", seed=5, hyperparameters=hp)
        baseline = wait_fine_tune(client, baseline["id"], {"succeeded"})
    # The same run on a worker of its own, killed after its first checkpoints.
    isolated = settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + "/9", lease_seconds=2.0)
    first = Worker(isolated, None, tmp_path / "train1.log", role="train").wait_ready()
    with ApiServer(isolated) as api:
        client = Client(api.url, keys["a"])
        ft = fine_tune(client, training_file=upload(client, data), method="full", seed=5, hyperparameters=hp)
        deadline = time.monotonic() + 120
        while (
            not metrics(client, ft["id"]) or metrics(client, ft["id"])[-1]["step"] < 24
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        first.kill()
        killed_at = metrics(client, ft["id"])[-1]["step"]
        second = Worker(isolated, None, tmp_path / "train2.log", role="train").wait_ready()
        try:
            done = wait_fine_tune(client, ft["id"], {"succeeded", "failed"})
        finally:
            second.stop()
            first.stop()
        steps = [e["step"] for e in metrics(client, ft["id"])]
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    resumed_from = max(s for s in (10, 20, 30) if s <= killed_at)
    assert steps.count(resumed_from) == 1 and all(steps.count(s) == 1 for s in range(1, resumed_from + 1))
    assert steps[-1] == 40
    assert done["output"]["final_loss"] == pytest.approx(baseline["output"]["final_loss"], abs=1e-6)
