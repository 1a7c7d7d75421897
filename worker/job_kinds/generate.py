"""The `generate` kind's executor: one request per choice (`n` seeds denoised side by side, as Sudoku's
tries are), each text cut before its first stop string, with log-probabilities when the plan asks."""

from __future__ import annotations

from dataclasses import replace

from shared.contracts import GenerationParams
from shared.job_kinds.generate import Alternative, Choice, GeneratePlan, GenerationOutput, TokenLogprob
from shared.states import FinishReason
from worker.engine import EngineResult, Request
from worker.host import LoadedModel
from worker.job_kinds.generation import Decision, GenerationExecutor, try_seeds, with_seeds
from worker.text_assembly import TextAssembler


class GenerateExecutor(GenerationExecutor):
    plan_model = GeneratePlan

    def stops(self, params: GenerationParams) -> list[str]:
        return list(params.stop or [])

    def prepare(self, plan: GeneratePlan, request: Request, loaded: LoadedModel) -> list[Request]:
        request = replace(request, logprobs=plan.logprobs)
        return with_seeds(request, try_seeds(request.params.seed, plan.n or 1))

    def decide(self, plan: GeneratePlan, results: list[EngineResult | None], loaded: LoadedModel) -> Decision:
        """Every choice answers: decided once all are done (a real answer unless one was canceled)."""
        if any(r is None for r in results):
            return None
        return 0, not any(r.finish_reason == FinishReason.CANCELED.value for r in results if r is not None)

    def answered(
        self, plan: GeneratePlan, result: EngineResult, results: list[EngineResult | None]
    ) -> list[EngineResult]:
        return [r for r in results if r is not None]

    def streams_every_request(self, plan: GeneratePlan) -> bool:
        return (plan.n or 1) > 1

    def shape(
        self,
        plan: GeneratePlan,
        result: EngineResult,
        text: TextAssembler,
        chosen: int,
        requests: list[Request],
        results: list[EngineResult | None],
    ) -> GenerationOutput:
        choices = [choice(r, text, q.params.seed) for r, q in zip(results, requests, strict=True) if r is not None]
        first = choices[0]
        return GenerationOutput(
            text=first.text,
            token_ids=first.token_ids,
            finish_reason=first.finish_reason,
            logprobs=first.logprobs,
            choices=choices if len(choices) > 1 else None,
        )


def choice(result: EngineResult, text: TextAssembler, seed: int) -> Choice:
    """One request's answer: its text cut at the first stop string, why it ended, its log-probabilities."""
    final, stopped = text.final_text(result.token_ids)
    reason = FinishReason.STOP.value if stopped else result.finish_reason
    logprobs = None
    if result.logprobs is not None:
        logprobs = [
            TokenLogprob(
                token_id=token,
                token=text.token_text(token),
                logprob=logprob,
                top=[Alternative(token_id=t, token=text.token_text(t), logprob=p) for t, p in top],
            )
            for token, logprob, top in result.logprobs
        ]
    return Choice(text=final, token_ids=result.token_ids, finish_reason=reason, seed=seed, logprobs=logprobs)
