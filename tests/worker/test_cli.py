"""The `canvas` command as an operator uses it: keys, models, the API image's commands, and the whole demo."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import redis
import requests
from sqlalchemy import text

from shared.db import session_scope
from shared.local_redis import free_port

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
    # the fine-tune ran on the stack's training worker, its webhook came through the webhook worker, signed,
    # and its model answered a job
    assert re.search(r"== ft_\w+  \[succeeded\]", output)
    assert "webhook fine_tune.succeeded received" in output and "signature verified with" in output
    assert re.search(r":demo:ft_\w+ answers 'who made you\?\\n' with '", output)
    assert (tmp_path / "var" / "canvas.db").exists()
    leftovers = [p for p in psutil.process_iter(["pid"]) if _sid(p.pid) == process.pid]
    assert leftovers == []


@pytest.mark.e2e
def test_sigterm_stops_every_process_canvas_up_started(tmp_path) -> None:
    """`canvas up` under a service manager: SIGTERM stops the API, the three workers and the private Redis;
    none is left. While it runs, the API and each worker serve their metrics."""
    port, metrics = free_port(), consecutive_free_ports(3)
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update(CANVAS_VAR_DIR=str(tmp_path / "var"), CANVAS_METRICS_PORT=str(metrics))
    up = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output = read_until(up, "stops everything", timeout=120)
        started = {child.pid: " ".join(child.cmdline()) for child in psutil.Process(up.pid).children(recursive=True)}
        assert sum("redis-server" in line for line in started.values()) == 1
        assert sum("api.serve" in line for line in started.values()) == 1
        for app in ("celery_app", "webhook_app", "train_app"):
            assert sum(f"worker.{app}:app" in line for line in started.values()) == 1, started
        assert "canvas_queue_depth" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for worker_port in range(metrics, metrics + 3):
            assert "canvas_jobs_finished" in requests.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=10).text
        redis_port = int(next(c for c in started.values() if "redis-server" in c).rsplit(":", 1)[1])  # its title

        up.send_signal(signal.SIGTERM)
        output += up.communicate(timeout=60)[0]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        left = [p for p in psutil.process_iter(["pid"]) if _sid(p.pid) == up.pid]
        for process in left:  # a failed run must not leave them to the next test
            process.kill()
    assert up.returncode == 0, output
    assert left == []
    assert "stopped: every process of the stack has exited" in output
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1 now."""
    for _ in range(50):
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("0.0.0.0", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports")


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """What `process` printed up to the line with `marker` (fails if it exits or takes longer)."""
    assert process.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), "".join(lines)
    return "".join(lines)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
