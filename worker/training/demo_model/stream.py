"""The demo model's training data as an endless seeded stream of same-shape batches, for the Trainer.

Each step's batch is a pure function of (seed, step), so a resumed run sees the same data. A step holds
either Sudoku puzzles (a pool of generated puzzles, each drawn through a random symmetry of the grid:
digit relabelling, row and column permutations within bands and stacks, band and stack permutations,
transposition; every one keeps the solution unique) or one text task's fresh examples that share their
prompt length. Held-out pairs of the evaluated text tasks (`tasks.held_out`) are never emitted. Knows
torch and the tokenizer's byte ids; nothing of the service.
"""

from __future__ import annotations

import random
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from shared.sudoku import make_puzzle
from worker.training.demo_model.tasks import HELD_OUT_TEXT, SUDOKU_LEVELS, TEXT_TASKS, held_out, sudoku_prompt

CHUNK = 250  # puzzles per seeded chunk: the pool does not depend on how many processes build it
LEVEL_MIX = ["easy", "easy", "medium", "medium", "hard"]
EVALUATED = ("reverse", "sort", "add")  # held-out fill sentences use subjects training never draws


@dataclass(frozen=True)
class Batch:
    full: torch.Tensor  # (B, S): BOS, prompt, response, EOS up to one canvas
    start: int  # where the canvas begins (every response here fits one canvas)


def _pool_chunk(args: tuple[int, int]) -> list[tuple[list[int], list[int]]]:
    seed, chunk = args
    rng = random.Random(f"train:sudoku-pool:{seed}:{chunk}")
    out = []
    for _ in range(CHUNK):
        puzzle = make_puzzle(rng, *SUDOKU_LEVELS[rng.choice(LEVEL_MIX)])
        out.append((puzzle.puzzle, puzzle.solution))
    return out


def sudoku_pool(size: int, seed: int, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` generated puzzles (rounded up to whole chunks) and their solutions, as (N, 81) tensors."""
    jobs = [(seed, chunk) for chunk in range(-(-size // CHUNK))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            chunks = list(pool.map(_pool_chunk, jobs))
    else:
        chunks = [_pool_chunk(job) for job in jobs]
    pairs = [pair for chunk in chunks for pair in chunk]
    return torch.tensor([p for p, _ in pairs]), torch.tensor([s for _, s in pairs])


def _line_permutation(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 9): new line i is old line perm[i]; bands permuted, lines permuted inside each band."""
    bands = torch.argsort(torch.rand(batch, 3, generator=generator), dim=1)
    inner = torch.argsort(torch.rand(batch, 3, 3, generator=generator), dim=2)
    return (bands[:, :, None] * 3 + inner).reshape(batch, 9)


def augment(
    puzzles: torch.Tensor, solutions: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random validity-preserving symmetry per row to (B, 81) grids (0 = blank stays 0)."""
    batch = puzzles.shape[0]
    digits = torch.cat(
        [torch.zeros(batch, 1, dtype=torch.long), torch.argsort(torch.rand(batch, 9, generator=generator)) + 1], 1
    )
    rows, cols = _line_permutation(batch, generator), _line_permutation(batch, generator)
    index = rows[:, :, None] * 9 + cols[:, None, :]
    flip = torch.rand(batch, generator=generator) < 0.5
    index = torch.where(flip[:, None, None], index.transpose(1, 2), index).reshape(batch, 81)
    return digits.gather(1, puzzles.gather(1, index)), digits.gather(1, solutions.gather(1, index))


class DemoStream:
    """`stream(step) -> Batch`: Sudoku with probability `sudoku_share`, else one text task's batch."""

    def __init__(
        self,
        tokenizer: Any,
        pool: tuple[torch.Tensor, torch.Tensor],
        *,
        canvas: int,
        batch_size: int,
        seed: int,
        sudoku_share: float = 0.6,
    ) -> None:
        self.canvas, self.batch_size, self.seed, self.sudoku_share = canvas, batch_size, seed, sudoku_share
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.ids = [tokenizer(chr(c), add_special_tokens=False).input_ids[0] for c in range(128)]
        self.pool = pool
        self.cells = torch.tensor([self.ids[ord(c)] for c in ".123456789"])  # blank, then digits 1-9
        prefix, suffix = sudoku_prompt("|").split("|")
        self.sudoku_prefix = torch.tensor([self.bos, *self.encode(prefix)])
        self.sudoku_suffix = torch.tensor(self.encode(suffix))
        self.prefetch = ThreadPoolExecutor(1)
        self.ahead: tuple[int, Future[Batch]] | None = None
        self.held_out = {pair for task in EVALUATED for pair in held_out(task, HELD_OUT_TEXT)}

    def encode(self, text: str) -> list[int]:
        return [self.ids[ord(c)] for c in text]

    def __call__(self, step: int) -> Batch:
        """The batch of `step`, built while the previous step trained; the next one starts building now."""
        ahead, self.ahead = self.ahead, None
        batch = ahead[1].result() if ahead and ahead[0] == step else self.build(step)
        self.ahead = (step + 1, self.prefetch.submit(self.build, step + 1))
        return batch

    def build(self, step: int) -> Batch:
        rng = random.Random(f"demo-stream:{self.seed}:{step}")
        if rng.random() < self.sudoku_share:
            return self.sudoku(torch.Generator().manual_seed(rng.getrandbits(62)))
        return self.text(rng, rng.choice(list(TEXT_TASKS)))

    def sudoku(self, generator: torch.Generator) -> Batch:
        picked = torch.randint(0, self.pool[0].shape[0], (self.batch_size,), generator=generator)
        puzzles, solutions = augment(self.pool[0][picked], self.pool[1][picked], generator)
        batch = self.batch_size
        eos = torch.full((batch, self.canvas - 81), self.eos)
        prompt = torch.cat(
            [self.sudoku_prefix.expand(batch, -1), self.cells[puzzles], self.sudoku_suffix.expand(batch, -1)], 1
        )
        return Batch(torch.cat([prompt, self.cells[solutions], eos], 1), prompt.shape[1])

    def text(self, rng: random.Random, task: str) -> Batch:
        """Fresh examples of one task that share the prompt length of a first drawn one (so each example's
        chance is unchanged by bucketing), drawn until the batch is full or 64 rounds have passed."""
        length = len(TEXT_TASKS[task](rng)[0])
        rows: list[list[int]] = []
        for _ in range(64 * self.batch_size):
            prompt, answer = TEXT_TASKS[task](rng)
            if len(prompt) != length or (prompt, answer) in self.held_out:
                continue
            response = self.encode(answer)
            assert len(response) < self.canvas, "a response longer than one canvas"
            rows.append([self.bos, *self.encode(prompt), *response] + [self.eos] * (self.canvas - len(response)))
            if len(rows) == self.batch_size:
                break
        return Batch(torch.tensor(rows), length + 1)
