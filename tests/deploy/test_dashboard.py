"""The Grafana dashboard (deploy/grafana/dashboards/canvas.json) and Prometheus' scrape configuration: every
query parses as PromQL (promql-parser) and reads only the metrics Canvas exports, every metric has a panel,
and Prometheus scrapes every Canvas process that serves metrics."""

from __future__ import annotations

import json
import re

import promql_parser
import yaml

from tests.deploy.conftest import DEPLOY, compose_config

# The metric names the API and the workers export (the contract of issue 19, item 7).
METRICS = {
    "canvas_jobs_submitted_total",
    "canvas_jobs_finished_total",
    "canvas_job_queue_seconds",
    "canvas_job_run_seconds",
    "canvas_queue_depth",
    "canvas_engine_rows",
    "canvas_engine_step_seconds",
    "canvas_tokens_per_forward",
    "canvas_gpu_memory_bytes",
    "canvas_webhook_deliveries_total",
    "canvas_fine_tune_steps_total",
}
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*"}


def queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "canvas.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_query_is_promql_over_canvas_metrics() -> None:
    used = set()
    for expr in queries():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        promql_parser.parse(expr)  # raises ValueError on a syntax error
        for name in re.findall(r"\bcanvas_[a-z_]+", expr):
            base = HISTOGRAM_SERIES.sub("", name)
            assert base in METRICS, f"{name} is not a metric Canvas exports"
            used.add(base)
    assert used == METRICS  # every metric has a panel


def test_prometheus_scrapes_every_canvas_process_that_serves_metrics(example_env) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped = {
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    services = compose_config(example_env)["services"]
    for name, service in services.items():
        port = service.get("environment", {}).get("CANVAS_METRICS_PORT")
        if port:
            assert (name, int(port)) in scraped, name
    assert ("api", 8000) in scraped
    assert {job["job_name"] for job in config["scrape_configs"]} >= {"canvas-api", "canvas-worker", "canvas-train"}
