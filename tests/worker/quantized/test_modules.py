"""Quantized experts and linears on the CPU: the same arithmetic as transformers' modules over the
dequantized weights, chunking that does not change results, gradients for QLoRA, and a whole tiny model
quantized (nf4, int8, fp8) close to its fp32 self and run by the engine with pinned and constrained positions."""

from __future__ import annotations

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion
from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaTextExperts

from worker.engine import Engine, Request, SamplingParams
from worker.quantized.codecs import METHODS, codec
from worker.quantized.experts import QuantizedExperts
from worker.quantized.layout import quantize_model
from worker.quantized.linears import Fp8Linear, quantized_linear
from worker.tiny import EOS_ID, tiny_config

PROMPT = torch.tensor([[2, 80, 81, 82, 83, 84, 85, 86, 87, 88]])


def experts_pair(method: str, chunk: int) -> tuple[QuantizedExperts, DiffusionGemmaTextExperts]:
    """Quantized experts, and transformers' experts holding the very weights they dequantize to."""
    torch.manual_seed(0)
    config = tiny_config().text_config
    config.num_experts = 6
    reference = DiffusionGemmaTextExperts(config)
    for p in (reference.gate_up_proj, reference.down_proj):
        torch.nn.init.normal_(p, std=0.05)
    ours = QuantizedExperts(method, 6, 64, 32, reference.act_fn, torch.float32, chunk_experts=chunk)
    ids = torch.arange(6)
    with torch.no_grad():
        for name, shape in ours.shapes.items():
            for suffix, tensor in codec(method).quantize(getattr(reference, name)).items():
                ours._buffers[name + suffix] = tensor
            getattr(reference, name).copy_(ours.codec.dequantize(ours.stored(name), ids, shape, torch.float32))
    return ours, reference


def routing(tokens: int = 40, k: int = 2, experts: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    hidden = torch.randn(tokens, 64)
    index = torch.stack([torch.randperm(experts - 1)[:k] for _ in range(tokens)])  # expert 5 never routed
    weights = torch.rand(tokens, k).softmax(-1)
    return hidden, index, weights


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_quantized_experts_compute_what_transformers_computes_on_their_weights(method, chunk) -> None:
    ours, reference = experts_pair(method, chunk)
    hidden, index, weights = routing()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(hidden, index, weights), reference(hidden, index, weights), rtol=1e-5, atol=1e-6
        )


def test_gradients_through_quantized_experts_match_transformers() -> None:
    """QLoRA needs gradients for the hidden states and the routing weights (the experts stay frozen)."""
    ours, reference = experts_pair("nf4", chunk=2)
    hidden, index, weights = routing()
    grads = []
    for module in (ours, reference):
        h, w = hidden.clone().requires_grad_(), weights.clone().requires_grad_()
        (module(h, index, w) * torch.linspace(-1, 1, 64)).sum().backward()
        grads.append((h.grad, w.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 7])
def test_an_nf4_linear_computes_in_fp32_on_the_cpu(rows) -> None:
    """An fp32 model's nf4 layers compute in fp32, as the reference does: bitsandbytes' CPU 4-bit gemv
    (repacked weights, taken in inference mode) runs in bf16, whose error alone is ~1e-2 here."""
    torch.manual_seed(0)
    weight = torch.randn(128, 192) * 0.05
    stored = codec("nf4").quantize(weight)
    layer = quantized_linear("nf4", 192, 128, stored, torch.float32).eval()
    dequantized = codec("nf4").dequantize(
        {k: v[None] for k, v in stored.items()}, torch.tensor([0]), (128, 192), torch.float32
    )[0]
    x = torch.randn(rows, 192)
    for _ in range(2):  # the repacking would happen on the first inference pass
        with torch.inference_mode():
            got = layer(x)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, torch.nn.functional.linear(x, dequantized), rtol=1e-5, atol=1e-5)


def test_fp8_linear_scaled_matmul_and_dequantize_paths_agree() -> None:
    """The GPU path (torch._scaled_mm, activations in e4m3 by row) runs on the CPU too: both paths stay
    within fp8's precision of the fp32 linear."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=False)
    fp8 = Fp8Linear(64, 48, codec("fp8").quantize(linear.weight))
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        exact, dequantized = linear(x), fp8(x)
        fp8.scaled = True
        scaled = fp8(x)
    assert scaled.shape == exact.shape
    for out in (dequantized, scaled):
        assert ((out - exact).norm() / exact.norm()).item() < 0.08


@pytest.fixture(scope="module")
def reference_model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


def canvas_logits(model) -> torch.Tensor:
    canvas = torch.randint(
        0, model.config.get_text_config().vocab_size, (1, 32), generator=torch.Generator().manual_seed(3)
    )
    with torch.inference_mode():
        return model(input_ids=PROMPT, decoder_input_ids=canvas).logits.float()  # (1, C, V)


@pytest.mark.parametrize(
    ("method", "max_kl", "min_agreement"), [("nf4", 0.02, 0.75), ("int8", 1e-3, 0.9), ("fp8", 5e-3, 0.85)]
)
def test_a_quantized_tiny_model_stays_close_to_fp32(
    tiny_model_dir, reference_model, method, max_kl, min_agreement
) -> None:
    """Per-position KL(fp32 || quantized) and argmax agreement over a canvas. Loose: the random tiny
    model's logits are nearly flat (std 0.16), so an argmax flips for a small error."""
    model = quantize_model(
        DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval(), method, min_weights=0
    )
    ref, got = canvas_logits(reference_model), canvas_logits(model)
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none")
    assert kl.sum(-1).mean().item() < max_kl
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean().item() >= min_agreement


def test_the_engine_runs_a_quantized_model_with_pinned_and_constrained_positions(tiny_model_dir) -> None:
    model = quantize_model(DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval(), "nf4", min_weights=0)
    digits = tuple(range(54, 64))
    pinned = {0: 80, 5: 81, 31: 82, 33: 83}  # across two canvases of 32
    allowed = {o: digits for o in range(6, 30)}
    params = SamplingParams(max_new_tokens=40, max_denoising_steps=6, seed=5)
    engine = Engine(model, max_rows=4)
    handles = [
        engine.submit(Request("c", (2, 70, 71), params, frozenset({EOS_ID}), pinned, allowed)),
        engine.submit(Request("free", (2, 90), SamplingParams(max_new_tokens=20, max_denoising_steps=4, seed=6))),
    ]
    engine.run_until_idle()
    constrained, free = (h.wait(timeout=0) for h in handles)
    assert all(constrained.token_ids[o] == t for o, t in pinned.items())
    assert all(constrained.token_ids[o] in digits for o in allowed)
    assert len(free.token_ids) == 20
