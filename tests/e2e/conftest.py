"""A live stack per database backend, shared by the e2e tests: the API server, a generation worker and a
webhook worker, both real Celery workers on threads of this process, with the tiny model loaded once.

End-to-end tests run on PostgreSQL, production's database; a test about SQLite, the embedded default, asks
for it with `@pytest.mark.parametrize("backend", ["sqlite", ...], indirect=True)`. Tests that kill a worker
start worker processes (`live.Worker`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.registry import describe_model_dir
from shared.settings import Settings
from tests.conftest import TINY
from tests.e2e.live import ApiServer, EmbeddedWorker, serving_worker, webhook_worker
from tests.e2e.receiver import Receiver
from worker.host import ModelHost, load_model


@pytest.fixture(scope="session", params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def model_host(tiny_model_dir: Path) -> ModelHost:
    """The tiny model and its engine, loaded once for every in-process generation worker."""
    host = ModelHost()
    host.add(load_model(TINY, tiny_model_dir, describe_model_dir(tiny_model_dir)["eos_token_ids"]))
    return host


# Package scope: the in-process workers stop when the last e2e test ends, so they never claim the jobs of the
# tests that run after this package on the same database and Redis (tests/shared, tests/worker).
@pytest.fixture(scope="package")
def live_worker(base_settings: Settings, model_host: ModelHost) -> Iterator[EmbeddedWorker]:
    with serving_worker(base_settings, model_host) as worker:
        yield worker


@pytest.fixture(scope="package")
def live_webhook_worker(base_settings: Settings) -> Iterator[EmbeddedWorker]:
    with webhook_worker(base_settings) as worker:
        yield worker


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def live_api(settings, live_worker, live_webhook_worker) -> Iterator[ApiServer]:
    with ApiServer(settings) as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
