"""Job kinds: the registry both sides dispatch on. Each kind has a module here with its typed plan (what
the API records on the job and the worker reads back) and its output; `KINDS` maps a kind to them and to
its queue route. Adding a kind: a module here, a planner in api/job_kinds/, an executor in
worker/job_kinds/, and one line in each side's table. Knows pydantic, not the database or either side."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel

from shared.contracts import GENERATE_TASK, TRAIN_QUEUE, TRAIN_TASK, generation_queue
from shared.job_kinds.fine_tune import FineTuneOutput, FineTunePlan
from shared.job_kinds.generate import GeneratePlan, GenerationOutput
from shared.job_kinds.infill import InfillOutput, InfillPlan
from shared.job_kinds.sudoku import SudokuOutput, SudokuPlan


class JobKind(StrEnum):
    GENERATE = "generate"
    INFILL = "infill"
    SUDOKU = "sudoku"
    FINE_TUNE = "fine_tune"


class UnknownJobKind(ValueError):
    """A kind no table knows: a programming error (the API only records kinds it validated)."""


@dataclass(frozen=True)
class KindSpec:
    """What both sides agree on for one kind: the plan and output models, the task and how it is routed."""

    kind: JobKind
    plan: type[BaseModel]
    output: type[BaseModel]
    task: str
    id_prefix: str  # job ids: "job_<hex>"; fine-tunes "ft_<hex>"
    fixed_queue: str | None = None  # None: the queue of the model that holds the weights

    def queue(self, serving_model: str) -> str:
        """The queue a job of this kind goes to; `serving_model` is the model whose workers hold the weights."""
        return self.fixed_queue or generation_queue(serving_model)

    def new_id(self) -> str:
        return self.id_prefix + uuid.uuid4().hex


KINDS: dict[JobKind, KindSpec] = {
    JobKind.GENERATE: KindSpec(JobKind.GENERATE, GeneratePlan, GenerationOutput, GENERATE_TASK, "job_"),
    JobKind.INFILL: KindSpec(JobKind.INFILL, InfillPlan, InfillOutput, GENERATE_TASK, "job_"),
    JobKind.SUDOKU: KindSpec(JobKind.SUDOKU, SudokuPlan, SudokuOutput, GENERATE_TASK, "job_"),
    JobKind.FINE_TUNE: KindSpec(JobKind.FINE_TUNE, FineTunePlan, FineTuneOutput, TRAIN_TASK, "ft_", TRAIN_QUEUE),
}
GENERATION_KINDS: tuple[JobKind, ...] = tuple(k for k, s in KINDS.items() if s.task == GENERATE_TASK)


def kind_spec(kind: str) -> KindSpec:
    """The spec of `kind`; raises UnknownJobKind for a kind no module defines."""
    try:
        return KINDS[JobKind(kind)]
    except ValueError:
        raise UnknownJobKind(f"unknown job kind {kind!r}") from None
