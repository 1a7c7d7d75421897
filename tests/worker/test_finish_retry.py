"""A job's result survives a brief database outage at its finish: the attempt-guarded write is retried
with backoff while the lease lasts. The outage is real: the test's PostgreSQL database refuses connections
and its open ones are terminated, then it comes back."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from shared.db import session_scope
from shared.jobs import create_job, new_job_id
from shared.models import Job
from tests.conftest import PG_ADMIN_URL, TINY
from worker.lifecycle import Outcome, WorkerRuntime, run_job

OUTPUT = {"text": "kept", "token_ids": [5], "finish_reason": "eos"}


class Outage:
    """Takes a PostgreSQL database away (no new connections, open ones terminated) until `seconds` pass."""

    def __init__(self, database_url: str, seconds: float) -> None:
        self.name, self.seconds = make_url(database_url).database, seconds
        self.ended = threading.Event()

    def _allow(self, allow: bool) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
            if not allow:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [self.name])
        if allow:
            self.ended.set()

    def begin(self) -> None:
        self._allow(False)
        threading.Timer(self.seconds, self._allow, [True]).start()


class EndsInAnOutage:
    """A job kind whose work is done the moment the database goes away."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage

    def execute(self, job: Any, runtime: Any, watch: Any) -> Outcome:
        self.outage.begin()
        return Outcome(output=OUTPUT, stats={"tokens": 1})

    def canceled_output(self) -> None:
        return None


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_result_finished_during_a_brief_database_outage_is_kept(settings) -> None:
    settings = settings.with_(lease_seconds=10.0)
    job = Job(id=new_job_id(), tenant_id="t", kind="generate", model=TINY, input={}, input_ids=[2], params={})
    with session_scope(settings.database_url) as session:
        create_job(session, job)
    outage = Outage(settings.database_url, seconds=1.5)
    try:
        result = run_job(WorkerRuntime(settings, "w1"), job.id, lambda kind: EndsInAnOutage(outage))
    finally:
        assert outage.ended.wait(10)
    assert result == "succeeded"
    with session_scope(settings.database_url) as session:
        row = session.get(Job, job.id)
        assert (row.status, row.attempts, row.output) == ("succeeded", 1, OUTPUT)
