"""Settings as an operator and a test set them: the environment (plain or `_FILE` variables) or keywords."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.sealing import new_key
from shared.settings import SECRETS, Settings, SettingsError, env_name

ROOT = Path(__file__).resolve().parents[2]

# A value for every field, none of them its default.
EVERY_FIELD: dict[str, Any] = {
    "database_url": "postgresql+psycopg://u:p@db:5432/canvas",
    "redis_url": "redis://cache:6380/2",
    "max_body_bytes": 2_000,
    "max_file_bytes": 3_000,
    "max_attempts": 5,
    "lease_seconds": 4.5,
    "heartbeat_seconds": 0.5,
    "cancel_poll_seconds": 0.1,
    "sweep_seconds": 0.3,
    "max_job_seconds": 60,
    "publish_timeout_seconds": 1.5,
    "engine_max_rows": 4,
    "engine_memory_bytes": 1 << 30,
    "engine_max_context": 4096,
    "engine_cuda_graphs": False,
    "draft_interval_seconds": 0.125,
    "rate_limit_per_minute": 7,
    "max_active_jobs": 8,
    "sync_wait_seconds": 9.0,
    "max_long_requests": 3,
    "max_long_requests_per_tenant": 2,
    "secure_cookies": True,
    "webhook_schedule": (0.3, 1.0, 2.5),
    "webhook_timeout_seconds": 1.0,
    "webhook_allow": "127.0.0.1/32,10.0.0.0/8",
    "webhook_disable_after_seconds": 100.0,
    "webhook_rotation_seconds": 50.0,
    "webhook_sealing_keys": "a2V5,b2xk",
    "log_level": "DEBUG",
    "log_format": "json",
    "metrics_port": 9100,
    "metrics_token": "scrape-token",
    "shutdown_grace_seconds": 3.5,
    "cpu_model_max_bytes": 1 << 20,
    "secret_key": "s3cret",
    "var_dir": Path("/srv/canvas/var"),
    "worker_models": ("canvas-demo", "canvas-tiny"),
    "api_sweeper": False,
    "release_depth": 8,
    "tenant_in_flight": 5,
    "release_lost_seconds": 3.0,
    "retention_job_days": 7.0,
    "retention_webhook_days": 3.0,
    "retention_outbox_hours": 2.0,
    "retention_idempotency_hours": 1.0,
    "retention_batch_rows": 50,
    "retention_interval_seconds": 5.0,
    "checkpoint_keep": 3,
    "file_quota_bytes": 10_000,
    "model_cache_bytes": 1 << 28,
    "max_batch_lines": 1_000,
    "batch_max_in_flight": 4,
    "batch_inline_lines": 50,
}


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment without any Canvas variable."""
    for name in Settings().to_env():
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    return monkeypatch


def test_every_field_goes_through_the_environment_and_back(environ: pytest.MonkeyPatch) -> None:
    assert set(EVERY_FIELD) == set(Settings.model_fields)
    settings = Settings(**EVERY_FIELD)
    assert all(getattr(settings, name) != getattr(Settings(), name) for name in EVERY_FIELD)
    env = settings.to_env()
    assert {env_name(name) for name in EVERY_FIELD} == set(env)
    assert env["DATABASE_URL"] == EVERY_FIELD["database_url"] and env["REDIS_URL"] == EVERY_FIELD["redis_url"]
    assert env["CANVAS_WEBHOOK_SCHEDULE"] == "0.3,1.0,2.5" and env["CANVAS_API_SWEEPER"] == "0"
    for name, value in env.items():
        environ.setenv(name, value)
    assert Settings.from_env() == settings
    assert Settings.from_env().model_fields_set == set(EVERY_FIELD)


def test_an_empty_environment_gives_the_defaults(environ: pytest.MonkeyPatch) -> None:
    assert Settings.from_env() == Settings()
    assert Settings.from_env().model_fields_set == set()


def test_keywords_never_read_the_environment(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("CANVAS_LEASE_SECONDS", "7")
    environ.setenv("REDIS_URL", "redis://elsewhere:1/0")
    settings = Settings(database_url="sqlite:///x.db")
    assert (settings.lease_seconds, settings.redis_url) == (60.0, "redis://127.0.0.1:6379/0")
    assert settings.with_(max_attempts=2).lease_seconds == 60.0


def test_lists_are_comma_separated(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("CANVAS_WEBHOOK_SCHEDULE", "0.5, 2,")
    environ.setenv("CANVAS_WORKER_MODELS", "canvas-demo,canvas-tiny")
    settings = Settings.from_env()
    assert settings.webhook_schedule == (0.5, 2.0)
    assert settings.worker_models == ("canvas-demo", "canvas-tiny")


def test_secrets_may_come_from_files(environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for field in SECRETS:
        (tmp_path / field).write_text(f"  {field} from a file\n")
        environ.setenv(f"{env_name(field)}_FILE", str(tmp_path / field))
    settings = Settings.from_env()
    assert [getattr(settings, field) for field in SECRETS] == [f"{field} from a file" for field in SECRETS]
    environ.setenv("CANVAS_SECRET_KEY", "plain")  # the plain variable, when set, wins
    assert Settings.from_env().secret_key == "plain"
    assert "from a file" not in repr(settings)  # nor are secrets shown in logs


def test_an_unreadable_secret_file_names_its_variable(environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    environ.setenv("DATABASE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match=r"DATABASE_URL_FILE=.*missing: cannot read it"):
        Settings.from_env()


def test_a_bad_value_names_its_variable(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("CANVAS_LEASE_SECONDS", "abc")
    environ.setenv("CANVAS_API_SWEEPER", "maybe")
    with pytest.raises(SettingsError) as error:
        Settings.from_env()
    assert "CANVAS_LEASE_SECONDS='abc': Input should be a valid number" in str(error.value)
    assert "CANVAS_API_SWEEPER='maybe'" in str(error.value)


def test_settings_are_frozen_and_changed_by_copy() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.lease_seconds = 1.0  # type: ignore[misc]
    changed = settings.with_(webhook_schedule=[1, 2], var_dir="elsewhere")
    assert changed.webhook_schedule == (1.0, 2.0) and changed.var_dir == Path("elsewhere")
    with pytest.raises(ValueError, match="no_such_setting"):
        settings.with_(no_such_setting=1)


def test_sealing_uses_the_settings_when_not_configured(tmp_path: Path) -> None:
    """A process that never calls sealing.configure (a worker) still seals under the configured keys."""
    (tmp_path / "keys").write_text(new_key() + "\n")
    env = {"CANVAS_WEBHOOK_SEALING_KEYS_FILE": str(tmp_path / "keys"), "PATH": ""}
    code = "from shared import sealing; print(sealing.seal('whsec_x'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sealed:v1:")
