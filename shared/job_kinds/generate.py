"""The `generate` kind: a prompt (text, chat messages or token ids) continued by denoising canvases."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_CHOICES = 16  # `n`: seeds denoised side by side, each one a choice
MAX_TOP_LOGPROBS = 20  # `logprobs`: alternatives reported per token


class GeneratePlan(BaseModel):
    """The input as given (exactly one of the three); the prompt ids are recorded beside it on the job.
    `n` choices (seeds `seed`, `seed + 1`, ... denoised side by side) and `logprobs` (how many alternatives
    to report per token; None: no log-probabilities) when the client asked for them. `echo`: the text a
    /v1/completions answer with OpenAI's `echo` begins each choice with (the prompt; token ids decoded), read
    by the OpenAI response shapes only (shared/openai_responses.py); the worker does not use it."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    input_ids: list[int] | None = None
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: str | None = None


class Alternative(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token_id: int
    token: str  # the token decoded alone (a character split across tokens shows as U+FFFD)
    logprob: float


class TokenLogprob(Alternative):
    """A returned token's log-probability under the distribution of the denoising step that committed its
    canvas (temperature-scaled, constraints applied), and the `top` most likely tokens of that step."""

    top: list[Alternative]


class Choice(BaseModel):
    """One of `n` choices: its text, ids, why it ended, its seed, and its log-probabilities if asked."""

    model_config = ConfigDict(extra="forbid")
    text: str
    token_ids: list[int]
    finish_reason: str
    seed: int
    logprobs: list[TokenLogprob] | None = None


class GenerationOutput(BaseModel):
    """What every generation kind answers: the text (cut before the first stop string), its ids, and why it
    ended (`eos`, `length`, `stop`, `canceled`). A generate job with `logprobs` adds one entry per token of
    `token_ids`; with `n` > 1, `choices` holds every choice (the first is also the text above)."""

    model_config = ConfigDict(extra="forbid")
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None
    choices: list[Choice] | None = None
