"""deploy/prometheus/prometheus.yml with docker-compose.yml: Prometheus sends CANVAS_METRICS_TOKEN on its
scrapes of the API's /metrics (a file compose writes from .env), and the API, given the same .env, answers
that scrape and refuses one without it. Prometheus itself does not run here: its request is made as it
makes it (`Authorization: <type> <the file's content, trimmed>`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.settings import Settings
from tests.deploy.conftest import DEPLOY, EXAMPLE_SECRETS, compose_config, write_env

TOKEN = "f" * 64


def api_job() -> dict:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "canvas-api"]
    return job


def prometheus_header(config: dict, file: str) -> str:
    """The Authorization header Prometheus sends: the token file's content as compose writes it."""
    mounted = {c["target"]: c["source"] for c in config["services"]["prometheus"]["configs"]}
    assert file in mounted, f"{file} is not mounted in the prometheus service"
    content = config["configs"][mounted[file]]["content"]
    return f"{api_job()['authorization']['type']} {content.strip()}"


@pytest.mark.parametrize("token", [TOKEN, ""], ids=["token", "no-token"])
def test_prometheus_scrapes_the_api_with_the_token_of_env(token: str, tmp_path: Path) -> None:
    from api.app import create_app

    values = {**EXAMPLE_SECRETS, **({"CANVAS_METRICS_TOKEN": token} if token else {})}
    config = compose_config(write_env(tmp_path / "env", values), profiles=("monitoring",))
    assert config["services"]["api"]["environment"]["CANVAS_METRICS_TOKEN"] == token
    header = prometheus_header(config, api_job()["authorization"]["credentials_file"])
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'none.db'}",
        redis_url="redis://127.0.0.1:1/0",  # /metrics reports no depth when Redis does not answer
        metrics_token=config["services"]["api"]["environment"]["CANVAS_METRICS_TOKEN"],
    )
    client = create_app(settings).test_client()
    assert client.get("/metrics", headers={"Authorization": header}).status_code == 200
    assert client.get("/metrics").status_code == (401 if token else 200)
