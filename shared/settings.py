"""One Settings object read from the environment (12-factor). Nothing else reads os.environ for config.

Every field is read from `CANVAS_<FIELD>` (`DATABASE_URL` and `REDIS_URL` keep their usual names); tuples
are comma-separated. Secrets may instead come from a file named by `<VAR>_FILE` (Docker and Kubernetes
mount secrets as files), read when `<VAR>` itself is unset. Only `Settings.from_env()` reads the
environment: `Settings(**fields)` is the given fields over the defaults, so tests build theirs exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PREFIX = "CANVAS_"
SECRETS = ("database_url", "secret_key", "webhook_sealing_keys", "metrics_token")  # may come from `<VAR>_FILE`


class SettingsError(ValueError):
    """An environment variable that does not give a valid setting; the message names it."""


class Settings(BaseSettings):
    """Runtime configuration. Build with `Settings.from_env()`; tests use `Settings(...)` and `with_()`."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, validate_by_name=True, extra="forbid")

    database_url: str = Field(default="sqlite:///var/canvas.db", validation_alias="DATABASE_URL", repr=False)
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    max_body_bytes: int = 1_000_000
    max_file_bytes: int = 50_000_000  # uploads (fine-tuning datasets)
    max_attempts: int = 3  # deliveries of one job that may start running before it is failed
    lease_seconds: float = 60.0  # a running job whose heartbeat is older than this is reaped
    heartbeat_seconds: float = 5.0
    cancel_poll_seconds: float = 0.25  # how often a running job checks for a cancel request
    sweep_seconds: float = 2.0  # outbox and lease sweeper period
    max_job_seconds: int = 6 * 3600  # the longest job we allow; the broker visibility timeout exceeds it
    publish_timeout_seconds: float = 2.0
    engine_max_rows: int = 16  # rows the engine denoises together; the worker takes as many jobs at once
    # K/V and row-state budget of the engine: rows are fewer than engine_max_rows if their slots do not fit;
    # 0: half the GPU memory free after the weights (2 GiB on the CPU).
    engine_memory_bytes: int = 0
    # Tokens of prompt and output one engine row holds (its K/V is preallocated for them); the API refuses a
    # job that needs more, naming the limit. Give the API and the workers the same value.
    engine_max_context: int = 8192
    # Capture the engine's decoder passes in CUDA graphs when its model loads (seconds; a GPU only).
    engine_cuda_graphs: bool = True
    draft_interval_seconds: float = 0.25  # at most this often a running job publishes its draft canvas
    # Per tenant (0: no limit): job submissions per minute (jobs, completions, fine-tunes), and jobs queued
    # or running at once. Past either, a submission gets 429 with Retry-After; nothing is recorded.
    rate_limit_per_minute: int = 600
    max_active_jobs: int = 10_000
    # The Batch API: lines in one input file, and per queue the batch jobs in flight at most (the batch lane
    # of shared/fairness.py). Below the rows its workers take (engine_max_rows per worker process), so an
    # interactive job finds a free row instead of waiting for a batch job to finish.
    max_batch_lines: int = 50_000
    batch_max_in_flight: int = 12
    # A batch whose file has at most this many lines is validated in the create request (it answers
    # `in_progress` or `failed`); a longer file answers `validating`
    # at once and is validated in the API process's background (api/batch_validation.py). 0: always later.
    batch_inline_lines: int = 1000
    # Fair release (shared/fairness.py), per broker queue: jobs released to the broker and not yet claimed
    # (keeps the broker's queue short; 0: release everything at once, first come first served), and jobs of
    # one tenant released and not finished (0: no cap). A queued job released this long ago that is in
    # neither its broker queue nor claimed (a Redis flush or failover lost it) is released again.
    release_depth: int = 4
    tenant_in_flight: int = 32
    release_lost_seconds: float = 15.0
    # How long an OpenAI-style request waits for its job before a 504 naming it: below the 60 s idle timeout
    # of common proxies (nginx, AWS ALB), whose own 504 the SDKs answer by resubmitting.
    sync_wait_seconds: float = 50.0
    # Per API process: requests that hold a thread for long (completions waiting or streaming, job event
    # streams). Past it they get 503 with Retry-After, so short requests always find a thread: keep it
    # below the server's threads (deploy/: gunicorn gthread, 64 threads). 0: no limit.
    max_long_requests: int = 48
    # Of those, the most one tenant may hold at once (0: no per-tenant limit), so one key streaming many
    # never-ending jobs cannot take every slot of a process from the other tenants.
    max_long_requests_per_tenant: int = 12
    # Webhooks: retry delays in seconds (one per retry), per-attempt timeout, operator allow-list of
    # CIDRs that the SSRF guard lets through (e.g. "127.0.0.1/32" for tests and internal receivers).
    webhook_schedule: Annotated[tuple[float, ...], NoDecode] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_timeout_seconds: float = 10.0
    webhook_allow: str = ""
    webhook_disable_after_seconds: float = 5 * 24 * 3600  # an endpoint failing everything this long is disabled
    webhook_rotation_seconds: float = 24 * 3600  # the previous secret keeps signing this long after a rotation
    # Keys that seal webhook signing secrets at rest (shared/sealing.py): comma-separated base64 32-byte
    # keys, the first sealing; empty (the embedded default): secrets are stored plain.
    webhook_sealing_keys: str = Field(default="", repr=False)
    # Mark the admin session cookie Secure on every response, not only those answered over HTTPS (set it
    # behind a proxy that ends TLS and forwards plain HTTP).
    secure_cookies: bool = False
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with the job's ids in scope
    # Each worker process serves Prometheus metrics on this port (0: none); `canvas worker serve|train`
    # gives its i-th child port + i. The API serves them at /metrics on its own port.
    metrics_port: int = 0
    # When set, the API's /metrics answers only requests with `Authorization: Bearer <this>` (401 otherwise);
    # empty: anyone who reaches the API's port may scrape it. Workers' metrics ports are not covered.
    metrics_token: str = Field(default="", repr=False)
    # On SIGTERM a generation worker takes no new job, lets its running jobs finish this long, then puts
    # the rest back in the queue without spending one of their attempts. Keep the orchestrator's grace
    # period (docker stop -t, terminationGracePeriodSeconds) longer.
    shutdown_grace_seconds: float = 25.0
    # A worker that finds no GPU refuses to load a model with more weight bytes than this (0: no limit).
    cpu_model_max_bytes: int = 8 << 30
    # Signs the admin dashboard's session cookies. Empty: a random key per process (sessions end with it,
    # and do not carry across gunicorn workers), so production sets CANVAS_SECRET_KEY.
    secret_key: str = Field(default="", repr=False)
    var_dir: Path = Path("var")
    worker_models: Annotated[tuple[str, ...], NoDecode] = ()  # the models a generation worker serves
    api_sweeper: bool = True  # whether each API process (api/wsgi.py) runs the outbox and lease sweeper
    # Retention (shared/retention.py; the sweeper applies it at most every retention_interval_seconds, at
    # most retention_batch_rows rows per table each time). Finished jobs go with their events, outbox
    # rows, webhook messages, attempts and checkpoints after retention_job_days (a fine-tune whose model
    # is registered stays); finished webhook messages and their attempts after retention_webhook_days;
    # published outbox rows of finished jobs after retention_outbox_hours; idempotency keys after
    # retention_idempotency_hours (a replay after that makes a new job). 0: keep forever.
    retention_job_days: float = 30.0
    retention_webhook_days: float = 30.0
    retention_outbox_hours: float = 24.0
    retention_idempotency_hours: float = 24.0
    retention_batch_rows: int = 500
    retention_interval_seconds: float = 60.0
    checkpoint_keep: int = 2  # a fine-tune keeps its last N checkpoints (each with optimizer state)
    file_quota_bytes: int = 1 << 30  # bytes of /v1/files one tenant may hold (0: no limit)
    # Memory for models and LoRA adapters a generation worker loads on demand (fine-tunes of the models it
    # serves), evicted least recently used; what a running job uses is never evicted. 0: half the GPU's
    # free memory when the first is loaded, or 8 GiB on a CPU worker.
    model_cache_bytes: int = 0

    @field_validator("webhook_schedule", "worker_models", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # construction never reads the environment: from_env does

    @classmethod
    def from_env(cls) -> Settings:
        """The settings this process's environment gives, defaults for what it leaves unset. The result's
        `model_fields_set` names the fields the environment set."""
        values = {**_secret_files(), **EnvSettingsSource(cls)()}  # a plain variable beats its _FILE
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, values)) from None

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for a child process (inverse of from_env)."""
        return {env_name(name): _env_value(getattr(self, name)) for name in type(self).model_fields}

    def with_(self, **changes: Any) -> Settings:
        """A copy with these fields changed (validated as in construction)."""
        return type(self)(**{**dict(self), **changes})


def env_name(field: str) -> str:
    """The environment variable that sets this field."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else PREFIX + field.upper()


def _env_value(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _secret_files() -> dict[str, str]:
    """Secrets from the files that `<VAR>_FILE` names, content stripped."""
    values = {}
    for field in SECRETS:
        variable = env_name(field) + "_FILE"
        if path := os.environ.get(variable):
            try:
                values[field] = Path(path).read_text().strip()
            except OSError as exc:
                raise SettingsError(f"{variable}={path}: cannot read it ({exc.strerror})") from None
    return values


def _describe(exc: ValidationError, values: dict[str, Any]) -> str:
    """One line per bad variable: its name, its value (secrets withheld) and what is wrong."""
    aliases = {env_name(field): field for field in Settings.model_fields}
    lines = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else ""
        field = aliases.get(key, key)
        name = env_name(field) if field in Settings.model_fields else key
        shown = "(withheld)" if field in SECRETS else repr(values.get(key, error.get("input")))
        lines.append(f"{name}={shown}: {error['msg']}")
    return "invalid settings: " + "; ".join(lines)
