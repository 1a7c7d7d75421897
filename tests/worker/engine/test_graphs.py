"""Bucketed decoder passes (what a CUDA graph captures), run eagerly on the CPU: padding rows change no
real row, the pass reads no host value, the buffers keep their addresses, a shape outside the buckets
runs the eager pass, and the engine's outputs are those of the eager engine and of generate()."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from tests.worker.engine.test_engine import EOS, PARAMS, HostReads, mixed_requests, reference, run
from tests.worker.test_lora import trained_adapter
from worker.engine import Engine, Request, SamplingParams
from worker.engine.engine import NonFiniteLogits
from worker.engine.graphs import ROW_BUCKETS, DecoderGraphs, capture_blocker, prefix_buckets, row_buckets
from worker.engine.rows import Phase
from worker.engine.runner import ModelRunner
from worker.training.lora import load_adapter


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


def denoising(model, prompt_lengths: tuple[int, ...], max_rows: int = 8) -> Engine:
    """An eager engine whose rows (one per prompt length, in slots 0, 1, ...) have taken a step."""
    engine = Engine(model, max_rows=max_rows, graphs="off")
    for i, n in enumerate(prompt_lengths):
        engine.submit(Request(f"r{i}", tuple(range(2, 2 + n)), SamplingParams(max_new_tokens=32, seed=i)))
    engine.step()  # prefill, then the first step in the same tick
    assert all(row.phase is Phase.DENOISE and row.step == 1 for row in engine.rows)
    return engine


def bucketed(engine: Engine, rows: tuple[int, ...], prefixes: tuple[int, ...]) -> DecoderGraphs:
    return DecoderGraphs(engine.runner, engine.kv, engine.slots, rows, prefixes, capture=False)


def eager(engine: Engine) -> torch.Tensor:
    return engine._eager_decode(engine.rows, 0, len(engine.rows)).clone()


def test_buckets_are_powers_of_two_capped_at_the_slots_and_the_context() -> None:
    assert row_buckets(8) == (1, 2, 4, 8)
    assert row_buckets(12) == (1, 2, 4, 8, 12)
    assert row_buckets(64) == ROW_BUCKETS == (1, 2, 4, 8, 16, 32)
    assert row_buckets(1) == (1,)
    assert prefix_buckets(32, 1024) == (32, 64, 128, 256, 512, 1024)
    assert prefix_buckets(256, 384) == (256, 384)


def test_padding_rows_change_no_real_rows_output_and_no_valid_kv(model) -> None:
    """Three rows of mixed prefix lengths (one past the 64-token sliding window) in a bucket of 4 rows
    whose prefix is the longest row's: each row's hidden states are the eager pass's bit for bit, and
    no slot's valid K/V (its prefix) changes."""
    engine = denoising(model, (3, 70, 40))
    graphs = bucketed(engine, row_buckets(8), (max(engine.kv.length),))
    assert graphs.bucket(3, max(engine.kv.length)) == (4, max(engine.kv.length))
    expected = eager(engine)
    valid = [
        buffer[s, :, : engine.kv.kept(n, shape.sliding)].clone()
        for s, n in enumerate(engine.kv.length)
        for shape, buffer in zip(engine.kv.shapes * 2, engine.kv.keys + engine.kv.values, strict=True)
    ]
    hidden = graphs.run(3, max(engine.kv.length))
    assert hidden is not None and hidden.shape == expected.shape
    assert torch.equal(hidden, expected)
    after = [
        buffer[s, :, : engine.kv.kept(n, shape.sliding)]
        for s, n in enumerate(engine.kv.length)
        for shape, buffer in zip(engine.kv.shapes * 2, engine.kv.keys + engine.kv.values, strict=True)
    ]
    assert all(torch.equal(a, b) for a, b in zip(valid, after, strict=True))


def test_longer_keys_change_only_the_last_bits(model) -> None:
    """A prefix bucket longer than the rows' prefixes: the masked keys weigh nothing, but SDPA sums the
    keys in blocks that depend on their count, so the output equals the eager pass's to rounding."""
    engine = denoising(model, (5, 9, 40))
    expected = eager(engine)
    for prefixes in ((64,), (1024,)):
        hidden = bucketed(engine, (4,), prefixes).run(3, 40)
        assert hidden is not None
        torch.testing.assert_close(hidden, expected, rtol=1e-4, atol=2e-5)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")  # transformers' version checks
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bucketed_pass_reads_no_host_value_and_compiles_without_a_graph_break(model, dtype) -> None:
    """A host read inside a capture fails it; no graph break under `torch.compile(fullgraph=True)` is
    the CPU stand-in for a capturable pass. bfloat16 is the case that stands for the GPU: compiling,
    transformers' grouped_mm experts call `torch.nn.functional.grouped_mm` for bfloat16 weights only;
    for float32 they call an opaque custom op whose loop reads the offsets on the host (`.tolist()`),
    which `fullgraph` cannot see, so the float32 compile alone proves nothing about the MoE."""
    engine = denoising(model if dtype == torch.float32 else copy.deepcopy(model).to(dtype), (3, 17))
    graphs = bucketed(engine, (4,), (64,))
    with HostReads() as reads:
        graphs._pass(4, 64)
    assert reads.calls == []
    expected = graphs.output.clone()
    torch._dynamo.reset()
    compiled = torch.compile(DecoderGraphs._pass.__wrapped__, fullgraph=True, backend="eager")
    compiled(graphs, 4, 64)
    assert torch.equal(graphs.output, expected)


def test_eager_experts_read_the_host_and_are_not_captured(model) -> None:
    """transformers' eager experts (`nonzero`, a Python loop over the routed experts) read the host: the
    detector above sees it, and `capture_blocker` refuses them, as it refuses float32 experts (ATen's
    grouped matmul copies its offsets to the host but for bfloat16 on compute capability 9.x/10.x), other
    GPUs, and quantized models; bfloat16 grouped_mm experts on a Hopper or Blackwell GPU are captured."""
    eager = copy.deepcopy(model)
    eager.set_experts_implementation("eager")
    graphs = bucketed(denoising(eager, (3, 17)), (4,), (64,))
    with HostReads() as reads:
        graphs._pass(4, 64)
    assert "nonzero" in reads.calls
    assert "'eager'" in capture_blocker(graphs.runner, (9, 0))
    assert "torch.float32" in capture_blocker(ModelRunner(copy.deepcopy(model)), (9, 0))
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    assert capture_blocker(ModelRunner(bf16), (9, 0)) is None
    assert capture_blocker(ModelRunner(bf16), (10, 0)) is None
    assert "compute capability 8.0" in capture_blocker(ModelRunner(bf16), (8, 0))
    bf16.canvas_quantization = "nf4"
    assert "quantized" in capture_blocker(ModelRunner(bf16), (9, 0))


def test_a_pass_outside_the_buckets_is_left_to_the_eager_pass(model) -> None:
    engine = denoising(model, (3, 9, 40))
    graphs = bucketed(engine, (1, 2), (32, 64))
    assert graphs.run(3, 40) is None  # more rows than the largest bucket
    assert graphs.run(2, 65) is None  # a prefix longer than the largest bucket
    assert graphs.run(2, 40) is not None


def test_an_engine_with_small_buckets_mixes_bucketed_and_eager_passes_with_the_same_outputs(model) -> None:
    requests = mixed_requests()
    alone = [run(model, [r])[0].token_ids for r in requests]
    engine = Engine(model, max_rows=4, graphs="uncaptured")
    engine.graphs = bucketed(engine, (1, 2), prefix_buckets(32, 128))
    handles = [engine.submit(r) for r in requests]
    engine.run_until_idle()
    assert [h.wait(0).token_ids for h in handles] == alone
    assert 0 < engine.stats["graph_passes"] < engine.stats["decoder_passes"]


def test_the_buffers_a_bucketed_pass_reads_and_writes_keep_their_addresses(model) -> None:
    """Canvas, self-conditioning input, lengths, K/V and the output: what a captured graph reads and
    writes never moves across ticks, and the rows' hidden states are a view of the output."""
    steps = SamplingParams(max_new_tokens=64, max_denoising_steps=6, stability_threshold=20, seed=1)
    engine = Engine(model, max_rows=4, graphs="uncaptured")
    for i, n in enumerate((3, 17, 40)):
        engine.submit(Request(f"r{i}", tuple(range(2, 2 + n)), steps))

    def addresses() -> list[int]:
        slots, kv = engine.slots, engine.kv
        tensors = [slots.canvas, slots.soft, kv.lengths, engine.graphs.output, *kv.keys, *kv.values]
        return [t.data_ptr() for t in tensors]

    before = addresses()
    for _ in range(10):  # prefill, a whole canvas, its commit and the next canvas
        engine.step()
        assert addresses() == before
    assert engine.stats["graph_passes"] == engine.stats["decoder_passes"] > 0
    hidden = engine.graphs.run(3, max(engine.kv.length))
    assert hidden is not None and hidden._base is engine.graphs.output


@pytest.mark.parametrize("params", PARAMS[:2])
def test_one_request_through_bucketed_passes_reproduces_generate(model, params) -> None:
    """Token for token, as the eager engine does: the last-bit differences of the longer keys do not
    change a sampled token here (no more than a batch's masks do in the eager engine's own tests)."""
    prompt = [2, 80, 81, 82, 83, 84]
    [result] = run(model, [Request("r", tuple(prompt), params, EOS)], graphs="uncaptured")
    assert result.token_ids == reference(model, prompt, params)[0]


def test_mixed_requests_through_bucketed_passes_equal_each_alone(model) -> None:
    requests = mixed_requests()
    alone = [run(model, [r])[0].token_ids for r in requests]
    assert [r.token_ids for r in run(model, requests, max_rows=8, graphs="uncaptured")] == alone


def test_a_row_that_fails_with_nan_leaves_no_nan_in_the_slots(model) -> None:
    """Its freed slot is still computed (and dropped) by bucketed passes: its K/V and self-conditioning
    input are zeroed, so no NaN reaches masked keys that later rows read."""
    engine = Engine(model, max_rows=4, graphs="uncaptured")
    logits = engine.runner.logits

    def nan_for_the_first_row(hidden):
        out = logits(hidden)
        if engine.stats["ticks"] == 3:
            out[0, 5, 7] = torch.nan
        return out

    engine.runner.logits = nan_for_the_first_row
    steps = SamplingParams(max_new_tokens=64, max_denoising_steps=8, seed=3)
    handles = [engine.submit(Request(f"r{i}", (2, 70 + i), steps)) for i in range(2)]
    for _ in range(6):
        engine.step()
    with pytest.raises(NonFiniteLogits):
        handles[0].wait(0)
    assert all(bool(torch.isfinite(t).all()) for t in (engine.slots.soft, *engine.kv.keys, *engine.kv.values))


def test_graph_modes_are_checked_and_the_cpu_captures_nothing(model) -> None:
    with pytest.raises(ValueError, match="graphs"):
        Engine(model, graphs="always")
    assert Engine(model, max_rows=2).graphs is None  # "auto" on the CPU: eager passes
    assert Engine(model, max_rows=2, graphs="uncaptured").graphs.graphs == {}


def test_rows_with_an_adapter_run_eagerly_and_base_rows_alone_in_buckets(tiny_model_dir, tmp_path) -> None:
    """A bucketed pass runs the base weights only: a tick with an adapter's row runs the eager pass, one
    with base rows alone the bucketed pass; loading the adapter moved no weight (the graphs are kept)."""
    path = trained_adapter(tiny_model_dir, tmp_path, "a", 0)
    requests = [
        Request(f"a{i}", tuple(range(2, 6 + 5 * i)), SamplingParams(max_new_tokens=32, seed=i), adapter="a")
        for i in range(2)
    ] + [Request(f"b{i}", tuple(range(3, 9 + 4 * i)), SamplingParams(max_new_tokens=96, seed=9 + i)) for i in range(2)]
    outputs, stats = {}, {}
    for graphs in ("off", "uncaptured"):
        engine = Engine(DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval(), graphs=graphs)
        engine.add_adapter("a", lambda model: load_adapter(model, path, "a"))
        assert graphs == "off" or (engine.graphs is not None and engine.graphs.weights_unchanged())
        handles = [engine.submit(r) for r in requests]
        engine.run_until_idle()
        outputs[graphs], stats[graphs] = [h.wait(0).token_ids for h in handles], engine.stats
    assert outputs["uncaptured"] == outputs["off"]
    assert 0 < stats["uncaptured"]["graph_passes"] < stats["uncaptured"]["decoder_passes"]


def test_the_graphs_are_dropped_when_unloading_an_adapter_moves_a_weight(tiny_model_dir) -> None:
    engine = Engine(DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval(), graphs="uncaptured")
    weight = engine.runner.decoder.layers[0].self_attn.q_proj.weight

    def merge(_adapters):
        weight.data = weight.data.clone()  # what merging an adapter into the base weights does
        return engine.runner.model

    engine.remove_adapter(merge)
    assert engine.graphs is None
    result = engine.submit(Request("r", (2, 70), SamplingParams(max_new_tokens=32, seed=1)))
    engine.run_until_idle()
    assert result.wait(0).token_ids and engine.stats["graph_passes"] == 0
