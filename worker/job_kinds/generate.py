"""The `generate` kind's executor: one request, its text cut before the first stop string."""

from __future__ import annotations

from shared.contracts import GenerationParams
from shared.job_kinds.generate import GeneratePlan, GenerationOutput
from shared.states import FinishReason
from worker.engine import EngineResult, Request
from worker.job_kinds.generation import GenerationExecutor
from worker.text_assembly import TextAssembler


class GenerateExecutor(GenerationExecutor):
    plan_model = GeneratePlan

    def stops(self, params: GenerationParams) -> list[str]:
        return list(params.stop or [])

    def shape(
        self, plan: GeneratePlan, result: EngineResult, text: TextAssembler, chosen: int, requests: list[Request]
    ) -> GenerationOutput:
        final, stopped = text.final_text(result.token_ids)
        reason = FinishReason.STOP.value if stopped else result.finish_reason
        return GenerationOutput(text=final, token_ids=result.token_ids, finish_reason=reason)
