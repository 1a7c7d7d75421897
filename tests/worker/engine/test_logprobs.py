"""Log-probabilities of committed tokens: asking for them changes no output; each returned token is its
canvas's last-step argmax (so it is the first alternative); pinned tokens are certain."""

from __future__ import annotations

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from worker.engine import Engine, Request, SamplingParams
from worker.engine.logprobs import IMPOSSIBLE, step_logprobs
from worker.tiny import EOS_ID

EOS = frozenset({EOS_ID})


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(tiny_model_dir).eval()


def run(model, requests: list[Request]) -> list:
    engine = Engine(model)
    handles = [engine.submit(r) for r in requests]
    engine.run_until_idle()
    return [h.wait(timeout=0) for h in handles]


def test_step_logprobs_are_log_softmax_values_and_their_top_k() -> None:
    logits = torch.randn(2, 4, 11)
    probs = torch.softmax(logits, dim=-1)
    committed = torch.randint(0, 11, (2, 4))
    chosen, top_ids, top = step_logprobs(probs, committed, 3)
    expected = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(chosen, expected.gather(-1, committed[..., None])[..., 0], atol=1e-5)
    values, ids = expected.topk(3, dim=-1)
    assert torch.equal(top_ids, ids) and torch.allclose(top, values, atol=1e-5)
    zero = step_logprobs(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[1]]), 0)
    assert zero[0].item() == IMPOSSIBLE and zero[1].shape == (1, 1, 0)


def test_asking_for_logprobs_changes_no_output_and_each_token_is_its_steps_argmax(model) -> None:
    params = SamplingParams(max_new_tokens=70, max_denoising_steps=8, seed=5)  # three canvases of 32
    plain, with_logprobs = run(
        model, [Request("a", (2, 40, 41), params, EOS), Request("b", (2, 40, 41), params, EOS, logprobs=4)]
    )
    assert plain.logprobs is None and with_logprobs.token_ids == plain.token_ids
    assert len(with_logprobs.logprobs) == len(plain.token_ids) > 32
    for token, (entry_token, logprob, top) in zip(plain.token_ids, with_logprobs.logprobs, strict=True):
        assert entry_token == token and len(top) == 4
        assert top[0][0] == token and logprob == pytest.approx(top[0][1])  # the committed argmax
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True) and logprob <= 0


def test_pinned_tokens_are_certain(model) -> None:
    params = SamplingParams(max_new_tokens=8, seed=1)
    (result,) = run(model, [Request("p", (2, 40), params, frozenset(), pinned={0: 50, 3: 60}, logprobs=2)])
    assert result.token_ids[0] == 50 and result.token_ids[3] == 60
    for offset in (0, 3):
        token, logprob, top = result.logprobs[offset]
        assert token == result.token_ids[offset]
        assert logprob == 0.0 and top[1][1] == IMPOSSIBLE  # one-hot: every other token impossible
