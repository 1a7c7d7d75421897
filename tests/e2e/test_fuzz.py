"""schemathesis against the real HTTP API (the e2e stack: API server, generation and webhook workers, on
PostgreSQL) from its own /v1/openapi.json, with a valid key: a bounded run over every operation, with
the document's links for stateful sequences. No response may be a 5xx or break its documented schema.
The full run (over 1,000 requests) is bench/fuzz.py; its figure is in docs/reliability.md."""

from __future__ import annotations

from bench.fuzz import run_schemathesis
from tests.conftest import TINY


def test_generated_requests_get_no_server_error_and_match_the_schema(live_api, keys, client) -> None:
    operations = sum(len(item) for item in client.get("/v1/openapi.json").get_json()["paths"].values())
    result = run_schemathesis(live_api.url, keys["a"], max_examples=2, model=TINY, max_time=30, seed=7)
    summary = f"{result.requests} requests, statuses {dict(result.by_status)}\n" + "\n".join(result.failures[:5])
    assert result.server_errors() == 0, summary
    assert result.failures == [], summary
    assert result.exit_code == 0, result.output[-3000:]
    assert result.requests >= 200, summary
    assert len(result.operations) == operations, sorted(result.operations)  # every operation was exercised
    assert result.by_status[202] > 0, summary  # some requests made jobs (the model named: bench/fuzz_hooks.py)
