"""Log-probabilities of committed tokens, for requests that ask for them (`Request.logprobs`).

A canvas commits the argmax of its last denoising step, so a committed token's log-probability is taken
under that step's distribution: softmax of the processed logits (constraints applied, divided by the
step's temperature), the distribution the sampler drew from. Each step keeps the values of its tile's
rows on the device; the engine reads them on the host only when a canvas commits. No full-vocabulary
temporaries beyond what `topk` needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMPOSSIBLE = -9999.0  # log 0 (a token the step gave no mass, e.g. beside a pinned one), finite for JSON


@dataclass
class StepLogprobs:
    """One row's values from its latest step (device tensors)."""

    chosen: torch.Tensor  # (C,) float32: log p of the token the step would commit at each position
    top_ids: torch.Tensor  # (C, k) long: the k most likely tokens at each position
    top: torch.Tensor  # (C, k) float32: their log p


def step_logprobs(probs: torch.Tensor, committed: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """log p of `committed` (B, C) under `probs` (B, C, V), and the k most likely tokens with their log p.
    Returns chosen (B, C), top_ids (B, C, k), top (B, C, k)."""
    chosen = _log(probs.gather(-1, committed[..., None])[..., 0])
    top_p, top_ids = probs.topk(k, dim=-1) if k else (probs[..., :0], committed[..., None][..., :0])
    return chosen, top_ids, _log(top_p)


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p.log(), IMPOSSIBLE)


def committed_entries(
    step: StepLogprobs, token_ids: list[int], k: int
) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """(token, log p, [(alternative, log p)] * k) for the first len(token_ids) positions of the canvas."""
    n = len(token_ids)
    chosen = step.chosen[:n].tolist()
    ids, top = step.top_ids[:n, :k].tolist(), step.top[:n, :k].tolist()
    return [(t, c, list(zip(i, p, strict=True))) for t, c, i, p in zip(token_ids, chosen, ids, top, strict=True)]
