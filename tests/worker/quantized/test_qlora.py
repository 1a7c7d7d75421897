"""QLoRA on an nf4 checkpoint, on the CPU: LoRA learns on top of frozen 4-bit weights (experts included),
the adapter is served on that quantized base, and the API refuses what a quantized base cannot do."""

from __future__ import annotations

import io

import pytest

from shared.db import session_scope
from shared.registry import register_model
from tests.conftest import auth
from worker.engine import Request, SamplingParams
from worker.host import load_model
from worker.job_kinds.fine_tune import load_for_training
from worker.quantized.experts import QuantizedExperts
from worker.training.lora import save_adapter
from worker.training.objective import Example
from worker.training.trainer import Trainer, TrainPlan


def test_lora_learns_on_an_nf4_base_and_is_served_on_it(nf4_tiny_dir, tmp_path) -> None:
    model, tokenizer = load_for_training(str(nf4_tiny_dir), "lora", 8, 16, "none")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert isinstance(model.get_base_model().model.decoder.layers[0].experts, QuantizedExperts)
    example = Example(
        prompt=tokenizer("say:").input_ids, response=tokenizer("moo moo", add_special_tokens=False).input_ids
    )
    plan = TrainPlan(
        learning_rate=2e-2, batch_size=2, total_steps=8, warmup_steps=0, checkpoint_every=100, seed=0, eos=1
    )
    trainer = Trainer(model, [example] * 4, plan)
    losses = [trainer.train_step()["loss"] for _ in range(plan.total_steps)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns the one example
    save_adapter(model, tmp_path / "moo")

    loaded = load_model("tiny-nf4", nf4_tiny_dir, [1])
    try:
        loaded.ensure_adapter("moo", str(tmp_path / "moo"))
        params = SamplingParams(max_new_tokens=16, max_denoising_steps=4, seed=3)
        prompt = tuple(example.prompt)
        handles = [loaded.engine.submit(Request(n or "base", prompt, params, adapter=n)) for n in ("moo", None)]
        tuned, base = (h.wait(timeout=60) for h in handles)
    finally:
        loaded.engine.stop()
    assert len(tuned.token_ids) == 16 and tuned.token_ids != base.token_ids


@pytest.mark.parametrize(
    ("body", "field"), [({"method": "full"}, "method"), ({"quantization": "4bit"}, "quantization")]
)
def test_a_quantized_base_takes_lora_only(settings, client, keys, nf4_tiny_dir, body, field) -> None:
    with session_scope(settings.database_url) as session:
        register_model(session, "tiny-nf4", nf4_tiny_dir)
    data = b'{"prompt": "a", "completion": "b"}\n' * 3
    upload = {"purpose": "fine-tune", "file": (io.BytesIO(data), "d.jsonl")}
    file = client.post("/v1/files", data=upload, headers=auth(keys["a"]), content_type="multipart/form-data")
    request = {"base_model": "tiny-nf4", "training_file": file.get_json()["id"], **body}
    response = client.post("/v1/fine_tunes", json=request, headers=auth(keys["a"]))
    assert response.status_code in (400, 422), response.get_json()
    error = response.get_json()["error"]
    assert error["param"] == field and "nf4-quantized" in error["message"]
