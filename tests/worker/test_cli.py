"""The `canvas` command as an operator uses it: keys, models, the API image's commands, and the whole demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text

from shared.db import session_scope

ROOT = Path(__file__).resolve().parents[2]


def canvas(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=ROOT,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_keys_are_printed_once_and_stored_hashed(settings) -> None:
    env = {**os.environ, **settings.to_env()}
    result = canvas("keys", "create", "--name", "ops", "--admin", env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("cvs_")
    with session_scope(settings.database_url) as session:
        rows = session.execute(text("SELECT * FROM api_keys")).all()
    assert rows
    assert not any(key in str(value) for row in rows for value in row)
    listing = canvas("keys", "list", env=env)
    assert key not in listing.stdout + listing.stderr
    key_id = listing.stdout.split()[0]
    assert canvas("keys", "revoke", key_id, env=env).returncode == 0
    assert "revoked" in canvas("keys", "list", env=env).stdout


def test_models_add_and_list(settings, tiny_model_dir, tmp_path) -> None:
    env = {**os.environ, **settings.to_env()}
    assert canvas("models", "add", "second", str(tiny_model_dir), env=env).returncode == 0
    assert "second" in canvas("models", "list", env=env).stdout
    bad = canvas("models", "add", "broken", str(tmp_path), env=env)
    assert bad.returncode == 2
    assert "config.json" in bad.stderr


def test_the_api_image_has_its_commands_without_the_worker_package() -> None:
    """The API image has no worker/: `canvas` still runs the commands of shared/ and api/, and says what to
    install for the worker's."""
    code = """
import sys
sys.modules["worker"] = None  # as in the API image: `import worker` fails
from shared.cli import main

def exit_code(*argv):
    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code

assert exit_code("--help") == 0
assert exit_code("api", "--help") == 0
assert exit_code("keys", "--help") == 0
assert exit_code("worker", "serve", "--models", "m") == 2
assert exit_code("up") == 2
assert "torch" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "canvas api [-h] [--host HOST] [--port PORT]" in result.stdout
    assert "canvas worker: the worker commands need the worker package" in result.stderr
    assert "pip install 'canvas[worker]'" in result.stderr
    assert "invalid choice: 'up'" in result.stderr  # with the same hint after it
    assert result.stderr.count("pip install 'canvas[worker]'") == 2


def test_python_m_worker_cli_still_runs_canvas() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("keys", "api", "worker", "up", "demo", "train"))


def test_a_bad_setting_is_named_not_a_traceback() -> None:
    result = canvas("keys", "list", env={**os.environ, "CANVAS_LEASE_SECONDS": "abc"})
    assert result.returncode == 2
    assert "CANVAS_LEASE_SECONDS='abc'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_demo_runs_the_main_job_end_to_end_and_leaves_nothing_behind(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env["CANVAS_VAR_DIR"] = str(tmp_path / "var")
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "4/4 jobs succeeded" in output
    assert "valid solution:" in output and re.search(r"draft of try \d+ at step", output)
    assert "tokens/forward" in output
    assert (tmp_path / "var" / "canvas.db").exists()
    leftovers = [p for p in psutil.process_iter(["pid"]) if _sid(p.pid) == process.pid]
    assert leftovers == []


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
