"""PostgreSQL restarted under load: clients keep submitting while the database stops and comes back.
Submissions during the outage get 503 (nothing accepted); every accepted job ends exactly once with its
output, and its webhook arrives under one id."""

from __future__ import annotations

import threading
import time
from collections import Counter

import requests

from tests.conftest import TINY
from tests.e2e.live import ApiServer, Client, serving_worker, webhook_worker
from tests.e2e.receiver import Receiver
from tests.faults.checks import (
    assert_each_ended_once_with_its_output,
    assert_no_webhook_lost_or_doubled,
    outcome_figures,
    report,
    wait_for_webhooks_to_settle,
)
from tests.faults.conftest import tenant_key
from tests.faults.servers import PrivatePostgres

JOB = {"model": TINY, "prompt": "steady", "params": {"max_new_tokens": 16, "max_denoising_steps": 24}}


class Load(threading.Thread):
    """Submits a job every `period` seconds until stopped; records the accepted ids and every status."""

    def __init__(self, client: Client, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.client, self.period = client, period
        self.accepted: list[str] = []
        self.statuses: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                response = self.client.http.post(
                    f"{self.client.url}/v1/jobs", json={"kind": "generate", **JOB}, timeout=30
                )
            except requests.RequestException:
                self.statuses.append(0)
                continue
            self.statuses.append(response.status_code)
            if response.status_code == 202:
                self.accepted.append(response.json()["id"])


def test_every_job_accepted_around_a_postgres_restart_ends_once(
    on_private_postgres, private_postgres: PrivatePostgres, model_host
) -> None:
    settings = on_private_postgres
    receiver = Receiver()
    try:
        with ApiServer(settings) as api, serving_worker(settings, model_host), webhook_worker(settings):
            client = Client(api.url, tenant_key(settings))
            hook = client.http.post(
                f"{api.url}/v1/webhook_endpoints",
                json={"url": receiver.script("/hooks"), "events": ["job.succeeded", "job.failed"]},
                timeout=10,
            )
            assert hook.status_code == 201, hook.text
            load = Load(client)
            load.start()
            time.sleep(2.0)  # jobs queued, running and finishing
            private_postgres.stop("fast")
            before = len(load.accepted)
            time.sleep(2.0)
            private_postgres.start()
            during = len(load.accepted)
            deadline = time.monotonic() + 30  # reconnecting takes a while on a busy machine
            while len(load.accepted) < during + 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            load.stopped.set()
            load.join(30)
            for job_id in load.accepted:
                client.wait(job_id, timeout=60)
            receiver.wait_for("/hooks", len(load.accepted), timeout=30)
            wait_for_webhooks_to_settle(settings.database_url, load.accepted)
    finally:
        receiver.close()
    assert 503 in load.statuses, "the outage was not seen: nothing was tested"
    assert set(load.statuses) <= {202, 503}, load.statuses
    assert before >= 2 and len(load.accepted) - during >= 2, (before, during, len(load.accepted))
    assert_each_ended_once_with_its_output(settings.database_url, load.accepted)
    assert_no_webhook_lost_or_doubled(settings.database_url, load.accepted, receiver, "/hooks")
    statuses = dict(sorted(Counter(load.statuses).items()))
    report(f"postgres restart: answers {statuses}; {outcome_figures(settings.database_url, load.accepted)}")


def test_a_job_delivered_while_postgres_is_down_runs_once_it_is_back(
    on_private_postgres, private_postgres: PrivatePostgres, model_host
) -> None:
    """The worker takes the job's task while the database is down: the claim fails, and the delivery comes
    again until the database answers (before: the task ended in an error, was acked, and the job stayed
    queued for ever)."""
    settings = on_private_postgres
    with ApiServer(settings) as api:
        client = Client(api.url, tenant_key(settings))
        job = client.submit(**JOB)  # published; no worker consumes the queue yet
        private_postgres.stop("fast")
        with serving_worker(settings, model_host):
            time.sleep(2.0)  # the worker takes the task and cannot claim the job
            private_postgres.start()
            done = client.wait(job["id"], timeout=40)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert_each_ended_once_with_its_output(settings.database_url, [job["id"]])
