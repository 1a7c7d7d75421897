"""One Settings object read from the environment (12-factor). Nothing else reads os.environ for config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _floats(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = os.environ.get(name)
    return tuple(float(x) for x in raw.split(",") if x.strip()) if raw else default


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Build with `Settings.from_env()`; tests use `replace(settings, ...)`."""

    database_url: str = "sqlite:///var/canvas.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
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
    engine_memory_bytes: int = 0  # KV and row-state budget of the engine; 0: rows are limited by count only
    draft_interval_seconds: float = 0.25  # at most this often a running job publishes its draft canvas
    # Per tenant (0: no limit): job submissions per minute (jobs, completions, fine-tunes), and jobs queued
    # or running at once. Past either, a submission gets 429 with Retry-After; nothing is recorded.
    rate_limit_per_minute: int = 600
    max_active_jobs: int = 10_000
    sync_wait_seconds: float = 600.0  # how long an OpenAI-style request waits for its job before a 504
    # Per API process: requests that hold a thread for long (completions waiting or streaming, job event
    # streams). Past it they get 503 with Retry-After, so short requests always find a thread: keep it
    # below the server's threads (deploy/: gunicorn gthread, 64 threads). 0: no limit.
    max_long_requests: int = 48
    # Webhooks: retry delays in seconds (one per retry), per-attempt timeout, operator allow-list of
    # CIDRs that the SSRF guard lets through (e.g. "127.0.0.1/32" for tests and internal receivers).
    webhook_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_timeout_seconds: float = 10.0
    webhook_allow: str = ""
    webhook_disable_after_seconds: float = 5 * 24 * 3600  # an endpoint failing everything this long is disabled
    webhook_rotation_seconds: float = 24 * 3600  # the previous secret keeps signing this long after a rotation
    # Keys that seal webhook signing secrets at rest (shared/sealing.py): comma-separated base64 32-byte
    # keys, the first sealing; empty (the embedded default): secrets are stored plain.
    webhook_sealing_keys: str = ""
    log_level: str = "INFO"
    # Signs the admin dashboard's session cookies. Empty: a random key per process (sessions end with it,
    # and do not carry across gunicorn workers), so production sets CANVAS_SECRET_KEY.
    secret_key: str = ""
    var_dir: Path = field(default_factory=lambda: Path("var"))

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()
        return cls(
            database_url=os.environ.get("DATABASE_URL", d.database_url),
            redis_url=os.environ.get("REDIS_URL", d.redis_url),
            max_body_bytes=_int("CANVAS_MAX_BODY_BYTES", d.max_body_bytes),
            max_file_bytes=_int("CANVAS_MAX_FILE_BYTES", d.max_file_bytes),
            max_attempts=_int("CANVAS_MAX_ATTEMPTS", d.max_attempts),
            lease_seconds=_float("CANVAS_LEASE_SECONDS", d.lease_seconds),
            heartbeat_seconds=_float("CANVAS_HEARTBEAT_SECONDS", d.heartbeat_seconds),
            cancel_poll_seconds=_float("CANVAS_CANCEL_POLL_SECONDS", d.cancel_poll_seconds),
            sweep_seconds=_float("CANVAS_SWEEP_SECONDS", d.sweep_seconds),
            max_job_seconds=_int("CANVAS_MAX_JOB_SECONDS", d.max_job_seconds),
            publish_timeout_seconds=_float("CANVAS_PUBLISH_TIMEOUT_SECONDS", d.publish_timeout_seconds),
            engine_max_rows=_int("CANVAS_ENGINE_MAX_ROWS", d.engine_max_rows),
            engine_memory_bytes=_int("CANVAS_ENGINE_MEMORY_BYTES", d.engine_memory_bytes),
            draft_interval_seconds=_float("CANVAS_DRAFT_INTERVAL_SECONDS", d.draft_interval_seconds),
            sync_wait_seconds=_float("CANVAS_SYNC_WAIT_SECONDS", d.sync_wait_seconds),
            max_long_requests=_int("CANVAS_MAX_LONG_REQUESTS", d.max_long_requests),
            rate_limit_per_minute=_int("CANVAS_RATE_LIMIT_PER_MINUTE", d.rate_limit_per_minute),
            max_active_jobs=_int("CANVAS_MAX_ACTIVE_JOBS", d.max_active_jobs),
            webhook_schedule=_floats("CANVAS_WEBHOOK_SCHEDULE", d.webhook_schedule),
            webhook_timeout_seconds=_float("CANVAS_WEBHOOK_TIMEOUT_SECONDS", d.webhook_timeout_seconds),
            webhook_allow=os.environ.get("CANVAS_WEBHOOK_ALLOW", d.webhook_allow),
            webhook_disable_after_seconds=_float(
                "CANVAS_WEBHOOK_DISABLE_AFTER_SECONDS", d.webhook_disable_after_seconds
            ),
            webhook_rotation_seconds=_float("CANVAS_WEBHOOK_ROTATION_SECONDS", d.webhook_rotation_seconds),
            webhook_sealing_keys=os.environ.get("CANVAS_WEBHOOK_SEALING_KEYS", d.webhook_sealing_keys),
            log_level=os.environ.get("CANVAS_LOG_LEVEL", d.log_level),
            secret_key=os.environ.get("CANVAS_SECRET_KEY", d.secret_key),
            var_dir=Path(os.environ.get("CANVAS_VAR_DIR", str(d.var_dir))),
        )

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for a child process (inverse of from_env)."""
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "CANVAS_MAX_BODY_BYTES": str(self.max_body_bytes),
            "CANVAS_MAX_FILE_BYTES": str(self.max_file_bytes),
            "CANVAS_MAX_ATTEMPTS": str(self.max_attempts),
            "CANVAS_LEASE_SECONDS": str(self.lease_seconds),
            "CANVAS_HEARTBEAT_SECONDS": str(self.heartbeat_seconds),
            "CANVAS_CANCEL_POLL_SECONDS": str(self.cancel_poll_seconds),
            "CANVAS_SWEEP_SECONDS": str(self.sweep_seconds),
            "CANVAS_MAX_JOB_SECONDS": str(self.max_job_seconds),
            "CANVAS_PUBLISH_TIMEOUT_SECONDS": str(self.publish_timeout_seconds),
            "CANVAS_ENGINE_MAX_ROWS": str(self.engine_max_rows),
            "CANVAS_ENGINE_MEMORY_BYTES": str(self.engine_memory_bytes),
            "CANVAS_DRAFT_INTERVAL_SECONDS": str(self.draft_interval_seconds),
            "CANVAS_RATE_LIMIT_PER_MINUTE": str(self.rate_limit_per_minute),
            "CANVAS_MAX_ACTIVE_JOBS": str(self.max_active_jobs),
            "CANVAS_SYNC_WAIT_SECONDS": str(self.sync_wait_seconds),
            "CANVAS_MAX_LONG_REQUESTS": str(self.max_long_requests),
            "CANVAS_WEBHOOK_SCHEDULE": ",".join(str(x) for x in self.webhook_schedule),
            "CANVAS_WEBHOOK_TIMEOUT_SECONDS": str(self.webhook_timeout_seconds),
            "CANVAS_WEBHOOK_ALLOW": self.webhook_allow,
            "CANVAS_WEBHOOK_DISABLE_AFTER_SECONDS": str(self.webhook_disable_after_seconds),
            "CANVAS_WEBHOOK_ROTATION_SECONDS": str(self.webhook_rotation_seconds),
            "CANVAS_WEBHOOK_SEALING_KEYS": self.webhook_sealing_keys,
            "CANVAS_LOG_LEVEL": self.log_level,
            "CANVAS_SECRET_KEY": self.secret_key,
            "CANVAS_VAR_DIR": str(self.var_dir),
        }

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
