"""Static KV slots and batched encoder passes: the decoder writes its canvas K/V in place and copies no
cache; every tick's prompt chunks and commits share one encoder pass; a slot's bytes set admission."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import DiffusionGemmaForBlockDiffusion

from tests.worker.engine.test_engine import EOS, mixed_requests, reference, run
from worker.engine import Engine, InvalidParams, Request, SamplingParams
from worker.engine.engine import CPU_MEMORY_BUDGET
from worker.engine.rows import Phase


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


class Copies(TorchFunctionMode):
    """Records the torch calls that build new K/V-shaped (4-D) tensors from old ones: concatenation along
    the sequence (the rotary embedding's concatenation of halves, along the last dimension, is the
    model's own and not counted), new_zeros (padding), index_select and tensor indexing (gathers)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        first = args[0] if args else None
        tensors = first if isinstance(first, (list, tuple)) else [first]
        four_d = any(isinstance(t, torch.Tensor) and t.dim() == 4 for t in tensors)
        if four_d and name == "cat":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) if kwargs else (args[1] if len(args) > 1 else 0)
            if dim in (-2, 2):
                self.calls.append(name)
        elif four_d and name in ("new_zeros", "index_select"):
            self.calls.append(name)
        elif four_d and name == "__getitem__" and isinstance(args[1], torch.Tensor):
            self.calls.append("gather by index")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("graphs", ["auto", "uncaptured"])
def test_a_decoder_tick_writes_the_canvas_in_place_and_copies_no_cache(model, graphs) -> None:
    """Rows of different prompt lengths denoise together: the K/V buffers keep their addresses, and no
    K/V tensor is concatenated, padded or gathered during the tick (the mask covers the shorter rows);
    with eager passes and with bucketed ones (graphs.py)."""
    steps = SamplingParams(max_new_tokens=32, max_denoising_steps=10, stability_threshold=20, seed=1)
    engine = Engine(model, max_rows=4, graphs=graphs)
    for i, n in enumerate((3, 17, 40)):
        engine.submit(Request(f"r{i}", tuple(range(2, 2 + n)), steps))
    engine.step()  # prefill
    addresses = [t.data_ptr() for t in engine.kv.keys + engine.kv.values]
    for _ in range(3):
        with Copies() as copies:
            engine.step()
        assert all(row.phase is Phase.DENOISE and row.step > 0 for row in engine.rows)
        assert copies.calls == []
    assert [t.data_ptr() for t in engine.kv.keys + engine.kv.values] == addresses


def test_one_encoder_pass_per_tick_holds_every_rows_prompt_chunk_and_commit(model) -> None:
    """Prompts of different lengths prefill in one pass; later, commits and new prompts share passes;
    the outputs are those of each request alone."""
    requests = mixed_requests()
    engine = Engine(model, max_rows=8)
    handles = [engine.submit(r) for r in requests[:4]]
    engine.step()
    assert engine.stats["encoder_passes"] == 1
    assert all(row.phase is Phase.DENOISE for row in engine.rows)
    handles += [engine.submit(r) for r in requests[4:]]
    ticks, passes = 0, engine.stats["encoder_passes"]
    while engine.step():
        ticks += 1
    assert engine.stats["encoder_passes"] - passes <= ticks + 1  # at most one a tick
    assert [h.wait(0).token_ids for h in handles] == [run(model, [r])[0].token_ids for r in requests]


def test_a_prompt_longer_than_the_sliding_window_reproduces_generate(model) -> None:
    """The tiny model's window is 64 tokens: a 150-token prompt and three commits shift the sliding
    layers' slots; the output is still generate()'s token for token."""
    prompt = [2, *[(7 * i) % 200 + 20 for i in range(149)]]
    params = SamplingParams(max_new_tokens=100, max_denoising_steps=8, seed=5)
    [result] = run(model, [Request("long", tuple(prompt), params, EOS)])
    assert result.token_ids == reference(model, prompt, params)[0]


def test_the_memory_budget_sets_the_slot_count_from_a_slots_real_bytes(model) -> None:
    probe = Engine(model, max_rows=16)
    kv_bytes = sum(t.numel() * t.element_size() for t in probe.kv.keys + probe.kv.values)
    assert probe.slot_bytes >= kv_bytes // probe.scheduler.max_rows
    assert probe.scheduler.max_rows == min(16, CPU_MEMORY_BUDGET // probe.slot_bytes)
    three = Engine(model, max_rows=16, memory_budget_bytes=3 * probe.slot_bytes + 1)
    assert three.scheduler.max_rows == 3 and three.kv.keys[0].shape[0] == 3


def test_a_request_beyond_the_context_is_refused_naming_the_field(model) -> None:
    engine = Engine(model, max_context=128)
    engine.submit(Request("fits", (2,) * 32, SamplingParams(max_new_tokens=96)))  # 32 + 3 canvases of 32
    with pytest.raises(InvalidParams) as refused:
        engine.submit(Request("long", (2,) * 33, SamplingParams(max_new_tokens=96)))
    assert refused.value.field == "max_new_tokens"
    assert "128" in str(refused.value)
