"""The API's side of the job kinds: one planner per kind turns a validated request into the prompt ids,
the kind's typed plan (recorded on the job, read back by the worker) and the parameters to run with.
`plan_job` dispatches on the kind and refuses another kind's fields. Knows tokenizers, not torch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from api.job_kinds import generate, infill, sudoku
from api.schemas import JobCreate
from api.state import settings
from shared.contracts import GenerationParams
from shared.errors import InvalidRequest
from shared.job_kinds import JobKind
from shared.models import ModelRecord


@dataclass(frozen=True)
class JobPlan:
    """What a planner hands the view: prompt ids, the typed plan, and the parameters (with max_new_tokens)."""

    input_ids: list[int]
    plan: BaseModel
    params: GenerationParams


@dataclass(frozen=True)
class Planner:
    fields: frozenset[str]  # the request fields only this kind takes
    plan: Callable[[JobCreate, ModelRecord], tuple[list[int], BaseModel, GenerationParams, str]]


PLANNERS: dict[JobKind, Planner] = {
    JobKind.GENERATE: Planner(generate.FIELDS, generate.plan),
    JobKind.INFILL: Planner(infill.FIELDS, infill.plan),
    JobKind.SUDOKU: Planner(sudoku.FIELDS, sudoku.plan),
}


def plan_job(body: JobCreate, model: ModelRecord) -> JobPlan:
    """The job's plan; raises InvalidRequest naming the field that is wrong (another kind's field, a prompt
    or canvas that does not fit the model)."""
    planner = PLANNERS[JobKind(body.kind)]
    stray = sorted(f for p in PLANNERS.values() for f in p.fields - planner.fields if getattr(body, f) is not None)
    if stray:
        raise InvalidRequest(f"'{stray[0]}' does not apply to {body.kind} jobs", stray[0])
    ids, plan, params, field = planner.plan(body, model)
    check_length(ids, params.max_new_tokens, model, field, settings().engine_max_context)
    return JobPlan(ids, plan, params)


def check_length(ids: list[int], max_new_tokens: int, model: ModelRecord, field: str, max_context: int) -> None:
    """The prompt plus the whole canvases needed for max_new_tokens must fit the model's positions and the
    context an engine row holds (`CANVAS_ENGINE_MAX_CONTEXT`, 0: the model's positions)."""
    canvases = math.ceil(max_new_tokens / model.canvas_length)
    needed = len(ids) + canvases * model.canvas_length
    allowed, whose = model.max_positions, f"model {model.name!r} allows"
    if 0 < max_context < allowed:
        allowed, whose = max_context, "this service's engines hold (CANVAS_ENGINE_MAX_CONTEXT)"
    if needed > allowed:
        raise InvalidRequest(
            f"the prompt is {len(ids)} tokens; with max_new_tokens={max_new_tokens} ({canvases} canvas(es) of "
            f"{model.canvas_length}) it needs {needed} positions, and {whose} {allowed}",
            field,
        )
