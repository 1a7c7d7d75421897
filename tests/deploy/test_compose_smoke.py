"""docker-compose.yml, run without containers (none run on these machines): every Canvas service's command
with the environment compose gives it (`docker compose config`), in the order its depends_on sets, on this
machine. Compose's service names map to 127.0.0.1 (its PostgreSQL and Redis to the local ones: a database
and a Redis of this test's own), its volumes to temporary directories, its ports to free ones. Then a
generation job with a webhook, a short fine-tune and a job on the fine-tuned model go through it, as the
README's compose walk-through does them, and every process stops on SIGTERM.

What it proves: the compose file's commands, environment and ordering work. What it cannot: the images
(tests/deploy/test_images.py lints them) and the GPUs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from standardwebhooks import Webhook

from tests.conftest import PG_ADMIN_URL
from tests.deploy.conftest import EXAMPLE_SECRETS, REDIS_PORT, ROOT, compose_config, write_env
from tests.e2e.live import Client
from tests.e2e.receiver import Receiver
from tests.e2e.test_fine_tunes import dataset, fine_tune, upload, wait_fine_tune

pytestmark = pytest.mark.e2e

LOCAL = {"postgres": 5432, "redis": REDIS_PORT}  # compose's services that this machine already runs
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """One compose service of a Canvas image, as this machine runs it."""

    name: str
    spec: dict[str, Any]
    mounts: dict[str, Path]  # container path -> host path
    log_dir: Path
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port
    process: subprocess.Popen | None = None

    def host_path(self, value: str) -> str:
        for target, source in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
            if value == target or value.startswith(target + "/"):
                return str(source) + value[len(target) :]
        return value

    def env(self) -> dict[str, str]:
        env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/tmp"), "PYTHONUNBUFFERED": "1"}
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")  # tests/conftest.py: a 2-core machine
        for key, value in self.spec.get("environment", {}).items():
            for host, port in LOCAL.items():  # service names resolve to this machine
                value = re.sub(rf"(?<=[@/]){host}:\d+(?=/)", f"127.0.0.1:{port}", value)
            env[key] = self.host_path(value)
        if "CANVAS_METRICS_PORT" in env:
            env["CANVAS_METRICS_PORT"] = str(self.ports.setdefault(int(env["CANVAS_METRICS_PORT"]), free_port()))
        if self.spec["command"][0] == "gunicorn":  # its port, and one process on a 2-core machine
            env["GUNICORN_CMD_ARGS"] = f"--bind 127.0.0.1:{self.ports.setdefault(8000, free_port())} --workers 1"
        return env

    def argv(self, command: list[str]) -> list[str]:
        return [self.host_path(arg) for arg in command]

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A one-off command in this service (`docker compose run --rm SERVICE ...`)."""
        return subprocess.run(
            self.argv(list(command)), cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> None:
        log = open(self.log_dir / f"{self.name}.log", "wb")  # noqa: SIM115 (the child holds it)
        self.process = subprocess.Popen(
            self.argv(self.spec["command"]), cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()

    def healthy(self) -> bool:
        """The service's compose health check (the image's, for the API), run here."""
        if self.ports.get(8000):
            try:
                return requests.get(f"http://127.0.0.1:{self.ports[8000]}/readyz", timeout=2).ok
            except requests.ConnectionError:
                return False
        test = self.spec["healthcheck"]["test"]
        assert test[0] == "CMD", test
        return self.run(*test[1:], timeout=20).returncode == 0

    def log_tail(self) -> str:
        return f"--- {self.name} ---\n" + (self.log_dir / f"{self.name}.log").read_text(errors="replace")[-3000:]


class Stack:
    """The Canvas services of the compose file, started and stopped as compose would."""

    def __init__(self, config: dict[str, Any], tmp: Path) -> None:
        (tmp / "logs").mkdir()
        self.tmp = tmp
        self.services: dict[str, Service] = {}
        for name, spec in config["services"].items():
            if name in LOCAL:
                continue
            mounts = {volume["target"]: self.source(volume) for volume in spec.get("volumes", [])}
            mounts |= {target: self.directory(f"tmpfs-{name}{target}") for target in spec.get("tmpfs", [])}
            self.services[name] = Service(name, spec, mounts, tmp / "logs")

    def source(self, volume: dict[str, Any]) -> Path:
        if volume["type"] == "bind":
            return Path(volume["source"])
        return self.directory(f"volume-{volume['source']}")  # a named volume, shared by the services

    def directory(self, name: str) -> Path:
        path = self.tmp / name.replace("/", "-")
        path.mkdir(exist_ok=True)
        return path

    def order(self) -> list[str]:
        """Services in an order that depends_on allows (a dependency first)."""
        done: list[str] = []

        def visit(name: str) -> None:
            if name in done or name in LOCAL:
                return
            for dependency in self.services[name].spec.get("depends_on", {}):
                visit(dependency)
            done.append(name)

        for name in sorted(self.services):
            visit(name)
        return done

    def up(self, after_migrations: Any) -> None:
        for name in self.order():
            service = self.services[name]
            for dependency, how in service.spec.get("depends_on", {}).items():
                if how["condition"] == "service_completed_successfully":
                    self.wait_exit(self.services[dependency])
            service.start()
            if name == "migrate":
                self.wait_exit(service)
                after_migrations()

    def wait_exit(self, service: Service, timeout: float = 60) -> None:
        assert service.process is not None, f"{service.name} never started"
        code = service.process.wait(timeout)
        assert code == 0, service.log_tail()

    def wait_healthy(self, timeout: float = 120) -> None:  # five processes start at once on two cores
        deadline = time.monotonic() + timeout
        waiting = [s for s in self.services.values() if s.spec.get("healthcheck") != {"disable": True}]
        while waiting:
            for service in [s for s in waiting if s.process and s.process.poll() is not None]:
                raise AssertionError(f"{service.name} exited {service.process.returncode}\n{service.log_tail()}")
            waiting = [s for s in waiting if not s.healthy()]
            if time.monotonic() > deadline:
                raise AssertionError("not healthy in time:\n" + "\n".join(s.log_tail() for s in waiting))
            time.sleep(0.5)

    def down(self, timeout: float = 40) -> dict[str, int | None]:
        """SIGTERM to every running service at once (docker compose down), SIGKILL to any still running
        after `timeout`; each one's exit status (None: it had to be killed)."""
        running = [s for s in self.services.values() if s.process and s.process.poll() is None]
        for service in running:
            os.killpg(service.process.pid, signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for service in running:
            try:
                codes[service.name] = service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
                codes[service.name] = None
        return codes


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """A database of this test's own on the local PostgreSQL: (user, name)."""
    name = f"canvas_compose_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield psycopg.conninfo.conninfo_to_dict(PG_ADMIN_URL).get("user", "postgres"), name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_compose_stack_serves_a_job_a_webhook_and_a_fine_tune(
    deploy_redis: str, database: tuple[str, str], tmp_path: Path
) -> None:
    from worker.tiny import make_tiny

    models = tmp_path / "models"
    make_tiny(models / "tiny", seed=0, canvas_length=32)
    user, name = database
    env = {
        **EXAMPLE_SECRETS,  # the local PostgreSQL trusts 127.0.0.1, whatever the password
        "POSTGRES_USER": user,
        "POSTGRES_DB": name,
        "CANVAS_MODELS": "tiny",
        "CANVAS_MODELS_DIR": str(models),
        "CANVAS_WEBHOOK_ALLOW": "127.0.0.1/32",  # the receiver below listens on loopback
    }
    stack = Stack(compose_config(write_env(tmp_path / "env", env)), tmp_path)
    assert set(stack.services) == {"migrate", "api", "sweeper", "worker", "train", "webhooks"}
    api = stack.services["api"]
    admin_key: list[str] = []

    def after_migrations() -> None:  # README: docker compose run --rm api canvas models add / keys create
        added = api.run("canvas", "models", "add", "tiny", "/models/tiny")
        assert added.returncode == 0, added.stdout + added.stderr
        created = api.run("canvas", "keys", "create", "--name", "smoke", "--admin")
        assert created.returncode == 0, created.stdout + created.stderr
        admin_key.append(created.stdout.split()[-1])

    receiver = Receiver()
    try:
        stack.up(after_migrations)
        stack.wait_healthy()
        client = Client(f"http://127.0.0.1:{api.ports[8000]}", admin_key[0])

        secret = client.http.get(f"{client.url}/v1/webhook_secret", timeout=10).json()["secret"]
        hook = receiver.script("/compose")
        job = client.submit(model="tiny", prompt="hello", params={"max_new_tokens": 8}, webhook={"url": hook})
        assert client.wait(job["id"], timeout=30)["status"] == "succeeded"
        [delivered] = receiver.wait_for("/compose", 1, timeout=30)
        payload = Webhook(secret).verify(delivered.body, delivered.headers)
        assert (payload["type"], payload["data"]["id"]) == ("job.succeeded", job["id"])

        hyperparameters = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0}
        ft = fine_tune(
            client, training_file=upload(client, dataset("copy")), method="full", hyperparameters=hyperparameters
        )
        done = wait_fine_tune(client, ft["id"], {"succeeded", "failed", "canceled"}, timeout=40)
        assert done["status"] == "succeeded", done
        # the train worker wrote it into the shared volume; the generation worker serves it from there
        tuned = client.submit(model=done["result_model"], prompt="hello", params={"max_new_tokens": 8})
        assert client.wait(tuned["id"], timeout=30)["status"] == "succeeded"
    finally:
        receiver.close()
        codes = stack.down()
    logs = "\n".join(s.log_tail() for s in stack.services.values() if s.name != "migrate")
    assert all(code is not None for code in codes.values()), (codes, logs)  # SIGTERM stopped every one
    assert codes["worker"] == codes["train"] == codes["webhooks"] == codes["sweeper"] == 0, (codes, logs)
