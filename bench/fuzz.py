"""Fuzzing: schemathesis against the real HTTP API, from its own /v1/openapi.json, with a valid key.

Every operation of the document is exercised with generated requests (valid and invalid), and each
response is checked: no 5xx (`not_a_server_error`) and the documented shape for its status
(`response_schema_conformance`). The stateful phase follows the document's links (ids from a POST flow
into the operations on that id) and schemathesis' own inferred ones. Prints the counts; exits 1 on any
failure.

  python bench/fuzz.py [--max-examples 25] [--max-time 600] [--backend postgresql|sqlite] [--seed 1]
  python bench/fuzz.py --url http://127.0.0.1:8000 --key sk-... [--max-examples 25]

Without --url it starts its own stack in this process: a fresh database (a temporary PostgreSQL database
on CANVAS_BENCH_PG, default postgresql://postgres@127.0.0.1:5432/postgres, or a SQLite file), Redis at
REDIS_URL (default redis://127.0.0.1:6379/12), the API on a loopback port (threaded WSGI, the sweeper on)
and a real generation worker and webhook worker (Celery, in threads) serving a tiny random model.
`run_schemathesis` is what tests/e2e/test_fuzz.py runs, bounded, against the e2e stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHECKS = "not_a_server_error,response_schema_conformance"


@dataclass
class FuzzResult:
    """Counts from schemathesis' ndjson event stream."""

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    operations: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exit_code: int = 0
    output: str = ""

    def server_errors(self) -> int:
        return sum(n for status, n in self.by_status.items() if status >= 500)


def run_schemathesis(
    url: str,
    key: str,
    *,
    max_examples: int,
    model: str = "",
    max_time: float | None = None,
    seed: int = 1,
    workers: int = 1,
) -> FuzzResult:
    """Run `st run` against `url` and count what it sent, what came back and what failed. With `model`,
    half the bodies name it (bench/fuzz_hooks.py), so they reach the queue and the worker."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "bench.fuzz_hooks", "CANVAS_FUZZ_MODEL": model}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as report_dir:
        ndjson = Path(report_dir) / "events.ndjson"
        command = [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{url}/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            CHECKS,
            "--max-examples",
            str(max_examples),
            "--seed",
            str(seed),
            "--workers",
            str(workers),
            "--phases",
            "examples,fuzzing,stateful",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--suppress-health-check",
            "all",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(ndjson),
            "--no-color",
            *(["--max-time", str(int(max_time))] if max_time else []),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=report_dir)
        result = _read_events(ndjson) if ndjson.exists() else FuzzResult()
    result.exit_code, result.output = done.returncode, done.stdout + done.stderr
    return result


def _read_events(path: Path) -> FuzzResult:
    """Each finished scenario's recorder: its request/response pairs and its checks."""
    result = FuzzResult()
    for line in path.read_text().splitlines():
        recorder = json.loads(line).get("ScenarioFinished", {}).get("recorder") or {}
        for interaction in (recorder.get("interactions") or {}).values():
            response = interaction.get("response") or {}
            result.requests += 1
            result.operations.add(recorder.get("label", "?"))
            if "status_code" in response:
                result.by_status[int(response["status_code"])] += 1
        for checks in (recorder.get("checks") or {}).values():
            for check in checks:
                if str(check.get("status")).lower() == "failure":
                    failure = check.get("failure_info") or check
                    result.failures.append(f"{recorder.get('label')}: {check.get('name')}: {str(failure)[:400]}")
    return result


@contextmanager
def local_stack(backend: str) -> Iterator[tuple[str, str, str]]:
    """(API url, key) of a fresh stack in this process (see the module docstring)."""
    from shared.db import session_scope
    from shared.keys import create_key
    from shared.migrate import upgrade
    from shared.registry import describe_model_dir, register_model
    from shared.settings import Settings
    from tests.e2e.live import ApiServer, serving_worker, webhook_worker
    from worker.host import ModelHost, load_model
    from worker.tiny import make_tiny

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(_database(backend, tmp))
        upgrade(url)
        model_dir = make_tiny(tmp / "tiny", seed=0, canvas_length=32)
        with session_scope(url) as session:
            register_model(session, "tiny", model_dir)
            key = create_key(session, "fuzz", admin=False)[1]
        settings = Settings(
            database_url=url,
            redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12"),
            webhook_allow="127.0.0.1/32",
            sync_wait_seconds=60.0,
            var_dir=tmp / "var",
        )
        host = ModelHost()
        host.add(load_model("tiny", model_dir, describe_model_dir(model_dir)["eos_token_ids"]))
        stack.enter_context(serving_worker(settings, host))
        stack.enter_context(webhook_worker(settings))
        server = stack.enter_context(ApiServer(settings))
        yield server.url, key, "tiny"


@contextmanager
def _database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'canvas.db'}"
        return
    import uuid

    import psycopg

    from shared.db import dispose_engine

    admin = os.environ.get("CANVAS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"canvas_fuzz_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        yield url
    finally:
        dispose_engine(url)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(result: FuzzResult, seconds: float) -> None:
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(result.by_status.items()))
    print(f"requests: {result.requests} in {seconds:.0f} s across {len(result.operations)} operations")
    print(f"statuses: {statuses}")
    print(f"5xx: {result.server_errors()}; failed checks: {len(result.failures)}; errors: {len(result.errors)}")
    for failure in result.failures[:20]:
        print("  FAIL", failure)
    if result.exit_code not in (0, 1):
        print(result.output[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--model", default="", help="with --url: a model the server serves")
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--max-time", type=float)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--print-output", action="store_true")
    args = parser.parse_args()
    with ExitStack() as stack:
        if args.url:
            url, key, model = args.url, args.key, args.model
        else:
            url, key, model = stack.enter_context(local_stack(args.backend))
        started = time.monotonic()
        result = run_schemathesis(
            url, key, max_examples=args.max_examples, model=model, max_time=args.max_time, seed=args.seed
        )
        report(result, time.monotonic() - started)
        if args.print_output:
            print(result.output)
    sys.exit(0 if result.exit_code == 0 and not result.failures and not result.server_errors() else 1)


if __name__ == "__main__":
    main()
