"""Models loaded on demand, through the whole service (API, a real Celery worker, PostgreSQL): a load that
fails fails its job at once with its catalog code; a job that waits longer than its lease for memory
(another job uses the adapter that must go) keeps its lease, is not re-run, and then runs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import session_scope
from shared.models import Job, ModelRecord
from shared.registry import describe_model_dir
from shared.settings import Settings
from tests.conftest import REDIS_DB, TINY
from tests.e2e.live import ApiServer, Client, serving_worker
from tests.e2e.test_generation_jobs import LONG
from tests.worker.test_model_host import make_adapter
from worker.host import ModelHost, load_model


def register(settings: Settings, name: str, **fields: object) -> None:
    """A fine-tuned model of the tiny base, for every tenant."""
    with session_scope(settings.database_url) as session:
        base = session.get(ModelRecord, TINY)
        facts = {k: getattr(base, k) for k in ("path", "canvas_length", "max_positions", "vocab_size", "pad_token_id")}
        record = {**facts, "eos_token_ids": base.eos_token_ids, "base_model": TINY, **fields}
        session.merge(ModelRecord(name=name, **record))


@pytest.fixture
def isolated(settings: Settings, backend: str) -> Iterator[Settings]:
    """Settings on a Redis database of their own (the shared live worker serves the tiny model's queue);
    the models a test registers are removed after it."""
    yield settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB[backend] - 8}")
    with session_scope(settings.database_url) as session:
        for record in session.query(ModelRecord).filter(ModelRecord.base_model == TINY):
            session.delete(record)


def test_a_model_or_adapter_that_does_not_load_fails_its_job_at_once(isolated, keys, tmp_path, tiny_model_dir) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")  # its tokenizer reads, its weights do not
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    register(isolated, "tiny:no-adapter", adapter_path=str(tmp_path / "missing"))
    register(isolated, "tiny:broken", path=str(broken))
    host = ModelHost()
    host.add(load_model(TINY, tiny_model_dir, describe_model_dir(tiny_model_dir)["eos_token_ids"]))
    with ApiServer(isolated) as api, serving_worker(isolated, host):
        client = Client(api.url, keys["a"])
        jobs = {
            m: client.submit(model=m, prompt="x", params={"max_new_tokens": 4})
            for m in ("tiny:no-adapter", "tiny:broken")
        }
        done = {m: client.wait(j["id"], timeout=30) for m, j in jobs.items()}
    assert done["tiny:no-adapter"]["error"]["type"] == "adapter_not_loaded"
    assert done["tiny:broken"]["error"]["type"] == "model_load_failed"
    assert "tiny:broken" in done["tiny:broken"]["error"]["message"]
    for job in done.values():
        assert job["status"] == "failed" and job["attempts"] == 1
        assert [e["status"] for e in job["timeline"]] == ["queued", "running", "failed"]  # no reaping, no retry


def test_a_job_waiting_for_memory_longer_than_its_lease_is_not_rerun(isolated, keys, tmp_path, tiny_model_dir) -> None:
    paths = {name: make_adapter(tiny_model_dir, tmp_path / name, seed) for seed, name in enumerate(("a", "b"))}
    for name, path in paths.items():
        register(isolated, f"tiny:{name}", adapter_path=path)
    host = ModelHost(cache_bytes=sum(f.stat().st_size for f in Path(paths["a"]).glob("*.safetensors")) * 3 // 2)
    host.add(load_model(TINY, tiny_model_dir, describe_model_dir(tiny_model_dir)["eos_token_ids"]))
    with ApiServer(isolated) as api, serving_worker(isolated, host):
        client = Client(api.url, keys["a"])
        first = client.submit(model="tiny:a", prompt="x", params=LONG)
        client.wait(first["id"], {"running"})
        deadline = time.monotonic() + 30
        while "adapter:tiny:a" not in host.cache.entries and time.monotonic() < deadline:
            time.sleep(0.05)  # the first job holds adapter a
        second = client.submit(model="tiny:b", prompt="y", params={"max_new_tokens": 8})
        client.wait(second["id"], {"running"})
        time.sleep(3 * isolated.lease_seconds)  # b waits for a's memory, three leases long
        assert set(host.cache.entries) == {"adapter:tiny:a"}  # in use: never evicted
        assert client.cancel(first["id"]).status_code == 200
        done = client.wait(second["id"], timeout=30)
        client.wait(first["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert [e["status"] for e in done["timeline"]] == ["queued", "running", "succeeded"]
    assert set(host.cache.entries) == {"adapter:tiny:b"}
    with session_scope(isolated.database_url) as session:
        assert session.get(Job, second["id"]).attempts == 1
