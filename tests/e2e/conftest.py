"""A live stack per database backend: API server + one worker process, shared by the e2e tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import TINY
from tests.e2e.live import ApiServer, Worker
from tests.e2e.receiver import Receiver


@pytest.fixture(scope="session")
def live_worker(base_settings, tmp_path_factory) -> Iterator[Worker]:
    worker = Worker(base_settings, TINY, tmp_path_factory.mktemp("logs") / "worker.log").wait_ready()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def live_webhook_worker(base_settings, tmp_path_factory) -> Iterator[Worker]:
    worker = Worker(base_settings, None, tmp_path_factory.mktemp("logs") / "webhooks.log").wait_ready()
    yield worker
    worker.stop()


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
