"""The `infill` kind's executor: the known text pinned on the canvas, the holes restricted to ordinary
tokens (no EOS, padding or turn markers), and the output's text with each hole's fill."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shared.job_kinds.infill import Fill, InfillOutput, InfillPlan
from worker.engine import EngineResult, Request
from worker.host import LoadedModel
from worker.job_kinds.generation import GenerationExecutor
from worker.text_assembly import TextAssembler


class InfillExecutor(GenerationExecutor):
    plan_model = InfillPlan

    def prepare(self, plan: InfillPlan, request: Request, loaded: LoadedModel) -> list[Request]:
        return [constrain(plan, request, ordinary_tokens(loaded.tokenizer))]

    def shape(
        self,
        plan: InfillPlan,
        result: EngineResult,
        text: TextAssembler,
        chosen: int,
        requests: list[Request],
        results: list[EngineResult | None],
    ) -> InfillOutput:
        ids, fills, offset = result.token_ids, [], 0
        for segment in plan.segments:
            if segment.hole is not None:
                piece = ids[offset : offset + segment.width]
                fills.append(Fill(text=text.decode(piece), token_ids=piece))
            offset += segment.width
        whole = plan.prefix + text.decode(ids)
        return InfillOutput(text=whole, token_ids=ids, finish_reason=result.finish_reason, fills=fills)


def constrain(plan: InfillPlan, request: Request, ordinary: tuple[int, ...]) -> Request:
    """The request with the known text pinned and the holes restricted to `ordinary` (no EOS cut: every
    position counts)."""
    pinned: dict[int, int] = {}
    allowed: dict[int, tuple[int, ...]] = {}
    offset = 0
    for segment in plan.segments:
        if segment.hole is not None:
            allowed.update({offset + i: ordinary for i in range(segment.hole)})
        else:
            pinned.update({offset + i: t for i, t in enumerate(segment.ids or ())})
        offset += segment.width
    return replace(request, pinned=pinned, allowed=allowed, eos_ids=frozenset())


def ordinary_tokens(tokenizer: Any) -> tuple[int, ...]:
    """Every id but the special ones (a hole is text: no EOS, padding or turn markers)."""
    special = set(tokenizer.all_special_ids)
    return tuple(i for i in range(len(tokenizer)) if i not in special)
