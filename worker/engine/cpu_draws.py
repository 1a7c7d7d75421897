"""Exp(1) draws on the CPU equal bit for bit to ATen's `exponential_`, in a quarter of its time or less.

ATen's CPU `exponential_` (torch 2.13) is a serial loop: per element, two outputs of the generator's
Mersenne Twister as one 64-bit word (`random64`), its low 53 bits times 2**-53 as u in [0, 1), and
`-1.0 * log1p(-u)` in double, rounded to float32. The C library's scalar `log1p` makes it about 25 ns an
element: a quarter of a CPU engine step, where exact mode draws one such number per canvas position and
vocabulary entry, as `generate()`'s `multinomial` does. Here the same numbers come from vector passes:

- the generator's own `random_()` on int64 draws the same words (random64 % 2**63: same low 53 bits) and
  leaves the generator where `exponential_` would;
- numpy's vectorised `log1p` computes the double;
- a result within `_BAND` ULPs of a float32 rounding boundary, where numpy's log1p and the C library's
  could round to different floats, is recomputed with the C library's (`math.log1p`): a few per million.

`exponential_` checks the equality once per process against the installed torch and uses ATen's kernel
if it does not hold (another torch may draw differently) or numpy is missing (a GPU host may lack it; it
draws on the device there anyway). Knows ATen's algorithm, nothing of the engine.
"""

from __future__ import annotations

import logging
import math
import threading

import torch

try:
    import numpy as np
except ImportError:  # pragma: no cover - the worker's environment has it (transformers needs it)
    np = None  # type: ignore[assignment]

_CHUNK = 1 << 14  # elements per pass: the three scratch arrays (384 KiB) stay in the core's cache
_LOW53 = (1 << 53) - 1
_LOW29 = (1 << 29) - 1  # the double's mantissa bits that rounding to float32 drops
_HALF = 1 << 28  # those bits at a float32 rounding midpoint
_BAND = 1 << 10  # ULPs of the double either side of a midpoint that are recomputed exactly

log = logging.getLogger(__name__)
_checked: bool | None = None
_check_lock = threading.Lock()


def exponential_(out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`out.exponential_(1.0, generator=generator)`, bit for bit and generator state included, faster
    for a contiguous float32 CPU tensor and a CPU generator; ATen's own kernel for anything else."""
    if not (_eligible(out, generator) and _matches_aten()):
        return out.exponential_(1.0, generator=generator)
    _fill(out.view(-1).numpy(), generator)
    return out


def _eligible(out: torch.Tensor, generator: torch.Generator) -> bool:
    return (
        out.device.type == "cpu"
        and generator.device.type == "cpu"
        and out.dtype == torch.float32
        and out.is_contiguous()
        and not out.requires_grad
    )


def _fill(flat: np.ndarray, generator: torch.Generator) -> None:
    size = flat.size
    words_t = torch.empty(min(_CHUNK, size), dtype=torch.int64)
    words = words_t.numpy()
    u = np.empty(words.size, dtype=np.float64)
    d = np.empty(words.size, dtype=np.float64)
    for start in range(0, size, _CHUNK):
        n = min(_CHUNK, size - start)
        w, uu, dd = words[:n], u[:n], d[:n]
        words_t[:n].random_(generator=generator)  # random64() % 2**63: the same two engine outputs
        np.bitwise_and(w, _LOW53, out=w)
        np.multiply(w, 2.0**-53, out=uu)  # exact: an integer below 2**53 times a power of two
        np.negative(uu, out=dd)
        np.log1p(dd, out=dd)
        np.negative(dd, out=dd)
        _recompute_near_midpoints(uu, dd, w)
        flat[start : start + n] = dd  # round to nearest even, as static_cast<float> does


def _recompute_near_midpoints(u: np.ndarray, d: np.ndarray, scratch: np.ndarray) -> None:
    """Where d lies within _BAND ULPs of a float32 rounding midpoint, d = the C library's -log1p(-u)
    (ATen's value: `static_cast<T>(-1.0) / lambda * log1p(-val)` with lambda 1). Every d here is a
    normal float32 or zero, so the low 29 bits of its double are what rounding drops."""
    np.subtract(d.view(np.int64), _HALF - _BAND, out=scratch)
    np.bitwise_and(scratch, _LOW29, out=scratch)
    near = np.flatnonzero(scratch <= 2 * _BAND)
    for i in near.tolist():
        d[i] = -1.0 * math.log1p(-float(u[i]))


def _matches_aten() -> bool:
    """Whether this torch's `exponential_` draws what `_fill` computes (checked once per process)."""
    global _checked
    if _checked is None:
        with _check_lock:
            if _checked is None:
                _checked = np is not None and _self_check()
                if not _checked:
                    log.warning("exact Exp(1) draws: this torch draws differently; using ATen's kernel")
    return _checked


def _self_check(size: int = 3 * _CHUNK // 2 + 7) -> bool:
    ours, theirs = torch.Generator().manual_seed(20261129), torch.Generator().manual_seed(20261129)
    expected = torch.empty(size).exponential_(1.0, generator=theirs)
    got = torch.empty(size)
    _fill(got.numpy(), ours)
    return torch.equal(expected.view(torch.int32), got.view(torch.int32)) and torch.equal(
        ours.get_state(), theirs.get_state()
    )
