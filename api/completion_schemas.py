"""Request bodies of the OpenAI-compatible endpoints, and how they become a job.

Taken: `max_tokens` (or `max_completion_tokens`), `temperature` (scales the released schedule: 1.0 is
t 0.4 -> 0.8), `stop`, `seed`, `stream`, `stream_options.include_usage`, `n` (seeds denoised side by side),
`logprobs`/`top_logprobs` (under the final denoising step's distribution), and on /v1/completions a token-id
`prompt`, several prompts (up to MAX_PROMPTS, one job each), `suffix` (an infill job) and `echo` (each
choice begins with the prompt's text; not with `logprobs`, which would need the prompt tokens'
log-probabilities, nor with `suffix`).
Chat messages may hold text content parts, a `name`, null assistant content and the `developer` role
(rendered as `system`).

Knobs of autoregressive decoding at their neutral values (`top_p` 1, penalties 0, `logit_bias` {}, `best_of`
1, `response_format` text, no tools) are accepted, because common clients send them by
default; any other value is a 400 naming the field and saying what to use instead (`UNSUPPORTED`), never
silently ignored. `user`, `metadata`, `store`, `service_tier` and `parallel_tool_calls` are accepted and
ignored (they change nothing a client can see here). The `canvas` field is our extension: any
`GenerationParams` field (entropy bound, steps, ...). Knows pydantic and the job request, not Flask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from api.schemas import ChatMessage, CompletionJob, JobCreate
from shared.contracts import GenerationParams
from shared.errors import InvalidRequest
from shared.job_kinds.generate import MAX_CHOICES, MAX_TOP_LOGPROBS

RELEASED_T = (0.4, 0.8)  # t_min, t_max of the released schedule: temperature 1.0
OPENAI_NAMES = {"max_new_tokens": "max_tokens", "t_min": "temperature", "t_max": "temperature", "stop": "stop"}
COLDEST = 0.0025  # temperature 0 (greedy in OpenAI's terms) -> t_min = 0.001: effectively argmax
SUFFIX_HOLE_TOKENS = 16  # the fill's length with `suffix` when max_tokens is not given (OpenAI's default)
MAX_PROMPTS = 20  # prompts in one /v1/completions request (LangChain's OpenAI batches 20): one job each


class UnsupportedValue(InvalidRequest):
    """A field we take only at its neutral value, given another one (OpenAI's `unsupported_value`)."""

    code = "unsupported_value"


_TOOLS = "this server offers no tool calling (the model has no tool-call format here); describe the tools in the prompt"
_JSON = (
    "structured output is not supported: denoising cannot be constrained to a JSON grammar here; ask for JSON "
    "in the prompt and validate it, or use stop strings"
)
# field -> (is the value neutral?, what to use instead). None is neutral everywhere (clients send nulls).
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "top_p": (
        lambda v: v == 1,
        "nucleus sampling has no counterpart in block diffusion (every position of a canvas is sampled at "
        "once); use temperature, which scales the denoising schedule, or canvas.entropy_bound",
    ),
    "frequency_penalty": (
        lambda v: v == 0,
        "a penalty on tokens already generated has no counterpart when a whole canvas is denoised at once; "
        "leave it at 0 (raise temperature for more varied text)",
    ),
    "presence_penalty": (
        lambda v: v == 0,
        "a penalty on tokens already generated has no counterpart when a whole canvas is denoised at once; "
        "leave it at 0 (raise temperature for more varied text)",
    ),
    "logit_bias": (lambda v: v == {}, "per-token biases are not supported; use stop strings to end the text"),
    "best_of": (lambda v: v == 1, "there is no sequence score to rank choices by; use n for several choices"),
    "response_format": (lambda v: isinstance(v, dict) and v.get("type") == "text", _JSON),
    "tools": (lambda v: v == [], _TOOLS),
    "functions": (lambda v: v == [], _TOOLS),
    "tool_choice": (lambda v: v == "none", _TOOLS),
    "function_call": (lambda v: v == "none", _TOOLS),
    "reasoning_effort": (lambda v: False, "this model has no reasoning mode; leave reasoning_effort out"),
    "modalities": (lambda v: v == ["text"], "this model writes text only"),
    "audio": (lambda v: False, "this model writes text only"),
    "prediction": (lambda v: False, "predicted outputs are not supported; leave prediction out"),
    "web_search_options": (lambda v: False, "this server does no web search"),
}


def refuse_unsupported(body: BaseModel) -> None:
    """Raise UnsupportedValue for the first field of UNSUPPORTED that holds a non-neutral value."""
    for name, (neutral, instead) in UNSUPPORTED.items():
        value = getattr(body, name, None)
        if value is not None and not neutral(value):
            raise UnsupportedValue(f"{name}={value!r} is not supported: {instead}", name)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None  # ignored: nothing here needs padding against side channels


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StrictStr = Field(min_length=1, max_length=200)
    max_tokens: StrictInt | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=10.0)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = Field(
        None, ge=1, le=MAX_CHOICES, description="choices: seeds denoised side by side (seed, seed + 1, ...)"
    )
    canvas: dict[str, Any] | None = Field(None, description="Canvas extension: any GenerationParams field")
    # accepted and ignored: they change nothing a client can see here
    user: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    store: StrictBool | None = None
    service_tier: StrictStr | None = None
    # accepted at their neutral values only (UNSUPPORTED says what to use instead)
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def choices(self) -> int:
        return self.n or 1

    def params(self, max_tokens: int | None) -> GenerationParams:
        """The job's parameters: `canvas` first, then the OpenAI fields (a field set both ways is a 400)."""
        mapped: dict[str, Any] = {}
        if max_tokens is not None:
            mapped["max_new_tokens"] = max_tokens
        if self.temperature is not None:
            scale = max(self.temperature, COLDEST)
            mapped["t_min"], mapped["t_max"] = RELEASED_T[0] * scale, RELEASED_T[1] * scale
        if self.stop is not None:
            mapped["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.seed is not None:
            mapped["seed"] = self.seed
        both = sorted(set(mapped) & set(self.canvas or {}))
        if both:
            raise InvalidRequest(f"canvas.{both[0]} is also set by an OpenAI field: give it once", f"canvas.{both[0]}")
        try:
            return GenerationParams.model_validate({**(self.canvas or {}), **mapped})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "t_max"  # a cross-field check: the temperatures
            param = OPENAI_NAMES.get(field, "") if field in mapped else f"canvas.{field}"
            message = first["msg"].removeprefix("Value error, ")
            raise InvalidRequest(f"{param or 'canvas'}: {message}", param or "canvas") from None

    def generate_job(
        self, params: GenerationParams, logprobs: int | None, echo: bool = False, **given: Any
    ) -> JobCreate:
        """A generate job of this request: `given` is its input (prompt, input_ids or messages); with `echo`,
        a /v1/completions job whose answer begins with the prompt."""
        refuse_unsupported(self)
        n = self.choices if self.choices > 1 else None
        if echo:
            return CompletionJob(model=self.model, params=params, n=n, logprobs=logprobs, echo=True, **given)
        return JobCreate(model=self.model, params=params, n=n, logprobs=logprobs, **given)


Prompt = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class CompletionCreate(_Common):
    """POST /v1/completions: text or token ids; with `suffix`, an infill job (the fill between them)."""

    prompt: Prompt
    suffix: StrictStr | None = Field(None, description="text after the fill: the request becomes an infill job")
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: StrictInt | None = None
    echo: StrictBool | None = Field(None, description="each choice's text begins with the prompt's text")

    @property
    def infill(self) -> bool:
        return bool(self.suffix)

    def job(self) -> JobCreate:
        """The job of a request with one prompt (a Batch API line); several prompts are a 400 here."""
        prompts = self._prompts()
        if len(prompts) != 1:
            raise InvalidRequest("send one prompt per line (a list of prompts must hold exactly one)", "prompt")
        return self._job(prompts[0])

    def jobs(self) -> list[JobCreate]:
        """One job per prompt, in order (each with `n` seeds); every prompt is checked before any is returned."""
        return [self._job(prompt) for prompt in self._prompts()]

    def _job(self, prompt: str | list[int]) -> JobCreate:
        if self.echo and self.logprobs is not None:
            raise UnsupportedValue(
                "echo with logprobs would need the prompt tokens' log-probabilities, which this server does not "
                "compute (a denoising engine scores only the tokens it writes); drop one of them",
                "echo",
            )
        if self.infill:
            return self._infill_job(prompt)
        given = {"prompt": prompt} if isinstance(prompt, str) else {"input_ids": prompt}
        return self.generate_job(self.params(self.max_tokens), self.logprobs, bool(self.echo), **given)

    def _prompts(self) -> list[str | list[int]]:
        """The request's prompts: one text or token-id list, or a list of them (at most MAX_PROMPTS)."""
        prompt = self.prompt
        several = isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], str | list)
        prompts: list[Any] = list(prompt) if several else [prompt]  # type: ignore[arg-type]
        if len(prompts) > MAX_PROMPTS:
            raise InvalidRequest(
                f"{len(prompts)} prompts in one request; at most {MAX_PROMPTS} (send the rest in another request, "
                "or use the Batch API)",
                "prompt",
            )
        for i, one in enumerate(prompts):
            if not one:
                raise InvalidRequest("prompt must not be empty", "prompt" if not several else f"prompt.{i}")
        return prompts

    def _infill_job(self, prompt: str | list[int]) -> JobCreate:
        """prompt + a hole of max_tokens tokens + suffix, denoised as one canvas with the texts pinned."""
        if not isinstance(prompt, str):
            raise InvalidRequest("suffix needs a text prompt, not token ids", "suffix")
        if self.echo:
            raise UnsupportedValue(
                "echo does not apply with suffix: the answer is the fill; join prompt, fill and suffix yourself",
                "echo",
            )
        for name in ("stop", "logprobs"):
            if getattr(self, name) is not None:
                raise UnsupportedValue(
                    f"{name} does not apply with suffix: the fill has exactly max_tokens tokens", name
                )
        if self.choices > 1:
            raise UnsupportedValue("n > 1 does not apply with suffix: send one request per fill", "n")
        refuse_unsupported(self)
        params = self.params(None)
        hole = self.max_tokens or SUFFIX_HOLE_TOKENS
        return JobCreate(
            kind="infill", model=self.model, prefix=prompt, suffix=self.suffix, hole_tokens=hole, params=params
        )


class ContentPart(BaseModel):
    """One part of a message's content; only text parts are taken."""

    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class OpenAIMessage(BaseModel):
    """A chat message as OpenAI's clients write it."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = Field(None, max_length=256)
    refusal: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None
    tool_call_id: StrictStr | None = None

    def plain(self, at: str) -> ChatMessage:
        """This message as the chat template takes it: text content (parts joined by newlines), `developer`
        as `system`, null assistant content as empty text. Raises InvalidRequest naming what cannot be."""
        if self.role in ("tool", "function") or self.tool_calls or self.function_call or self.tool_call_id:
            raise UnsupportedValue(f"{at}: tool messages and tool calls are not supported: {_TOOLS}", f"{at}.role")
        if self.content is None:
            if self.role != "assistant":
                raise InvalidRequest(f"{at}.content: a {self.role} message needs content", f"{at}.content")
            text = ""
        elif isinstance(self.content, str):
            text = self.content
        else:
            text = "\n".join(_part_text(part, f"{at}.content.{i}") for i, part in enumerate(self.content))
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=text, name=self.name)


def _part_text(part: ContentPart, at: str) -> str:
    if part.type != "text" or part.text is None:
        what = f"a {part.type!r} part" if part.type != "text" else "a text part without 'text'"
        raise UnsupportedValue(f"{at}: only text parts are accepted (this model reads text), not {what}", at)
    return part.text


class ChatCompletionCreate(_Common):
    """POST /v1/chat/completions: the messages rendered with the model's chat template."""

    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=32768)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    parallel_tool_calls: StrictBool | None = None  # ignored: no tools are ever given (they are refused)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: Any = None
    modalities: list[StrictStr] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None

    def jobs(self) -> list[JobCreate]:
        return [self.job()]

    def job(self) -> JobCreate:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise InvalidRequest("give max_completion_tokens or max_tokens, not both", "max_tokens")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", "top_logprobs")
        limit = self.max_completion_tokens or self.max_tokens
        messages = [m.plain(f"messages.{i}") for i, m in enumerate(self.messages)]
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self.generate_job(self.params(limit), logprobs, messages=messages)
