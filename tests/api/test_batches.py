"""The Batch API's creation and lane, through the app (no worker): every line validated with the OpenAI
routes' schemas before any job exists, bad lines reported by number, and batch jobs released to the queue
a few at a time behind interactive ones. End to end with the SDK: tests/e2e/test_batches.py."""

from __future__ import annotations

import io
import json

from sqlalchemy import func, select

from shared.batch_finalizer import sweep_batches
from shared.contracts import generation_queue
from shared.db import session_scope
from shared.fairness import release
from shared.models import Job, StoredFile
from shared.queue import producer
from tests.api.test_admin_access import admin_login
from tests.conftest import TINY, auth

QUEUE = generation_queue(TINY)


def chat_line(custom_id: str, text: str = "hi", **body: object) -> dict:
    body = {"model": TINY, "messages": [{"role": "user", "content": text}], "max_tokens": 8, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def upload(client, key: str, lines: list, purpose: str = "batch") -> str:
    content = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    data = {"purpose": purpose, "file": (io.BytesIO(content), "requests.jsonl")}
    response = client.post("/v1/files", data=data, headers=auth(key), content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def create(client, key: str, file_id: str, **extra: object):
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
    return client.post("/v1/batches", json=body, headers=auth(key))


def count(settings, *where: object) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Job).where(*where)) or 0


def test_a_file_with_bad_lines_fails_the_batch_naming_each_line_and_creates_no_job(client, keys, settings) -> None:
    lines = [
        chat_line("ok"),
        "{not json",
        {**chat_line("wrong-url"), "url": "/v1/completions"},
        chat_line("knob", top_p=0.5),
        chat_line("ok"),  # a custom_id used twice
        chat_line("no-model", model="nope"),
        chat_line("streamed", stream=True),
        chat_line("extra", bogus=1),
    ]
    response = create(client, keys["a"], upload(client, keys["a"], lines))
    batch = response.get_json()
    assert response.status_code == 200 and batch["status"] == "failed" and batch["failed_at"]
    reported = {e["line"]: e for e in batch["errors"]["data"]}
    assert sorted(reported) == [2, 3, 4, 5, 6, 7, 8]
    assert reported[2]["code"] == "invalid_json"
    assert reported[3]["code"] == "mismatched_url" and reported[3]["param"] == "url"
    assert "top_p" in reported[4]["message"] and reported[4]["param"].startswith("body")
    assert reported[5]["code"] == "duplicate_custom_id"
    assert reported[6]["param"] == "body.model" and "nope" in reported[6]["message"]
    assert reported[7]["param"] == "body.stream"
    assert reported[8]["param"] == "body.bogus"
    content = client.get(f"/v1/files/{batch['error_file_id']}/content", headers=auth(keys["a"]))
    file_lines = [json.loads(line) for line in content.data.decode().splitlines()]
    assert [line["error"]["line"] for line in file_lines] == [2, 3, 4, 5, 6, 7, 8]
    assert file_lines[1]["custom_id"] == "wrong-url" and file_lines[1]["response"] is None
    assert count(settings) == 0  # not one job: no half-created batch
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


def test_a_good_file_becomes_one_queued_job_per_line(client, keys, settings) -> None:
    lines = [chat_line(f"r{i}", f"question {i}") for i in range(7)]
    response = create(client, keys["a"], upload(client, keys["a"], lines), metadata={"run": "nightly"})
    batch = response.get_json()
    assert batch["status"] == "in_progress" and batch["metadata"] == {"run": "nightly"}
    assert batch["request_counts"] == {"total": 7, "completed": 0, "failed": 0}
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    with session_scope(settings.database_url) as session:
        jobs = session.scalars(select(Job).where(Job.batch_id == batch["id"]).order_by(Job.batch_line)).all()
        assert [j.custom_id for j in jobs] == [f"r{i}" for i in range(7)]
        assert all(
            j.status == "queued" and j.input["messages"][0]["content"] == f"question {i}" for i, j in enumerate(jobs)
        )
        assert {j.tenant_id for j in jobs} == {jobs[0].tenant_id}


def test_batch_jobs_are_released_a_few_at_a_time_behind_interactive_ones(client, keys, settings) -> None:
    depth = settings.release_depth
    lines = [chat_line(f"r{i}") for i in range(depth + 5)]
    batch = create(client, keys["a"], upload(client, keys["a"], lines)).get_json()
    batch_released = select(func.count()).where(Job.batch_id == batch["id"], Job.released_at.is_not(None))
    with session_scope(settings.database_url) as session:
        assert session.scalar(batch_released) == depth  # the creation released what the queue's depth takes
        assert session.query(Job).filter_by(lane="batch").count() == depth + 5
    with session_scope(settings.database_url) as session:
        assert release(session, producer(settings), settings, QUEUE) == 0  # none claimed: nothing more
    interactive = client.post(
        "/v1/jobs", json={"kind": "generate", "model": TINY, "prompt": "now"}, headers=auth(keys["b"])
    )
    assert interactive.status_code == 202  # accepted; it waits for the next free slot, ahead of the batch
    with session_scope(settings.database_url) as session:
        session.execute(
            Job.__table__.update().where(Job.batch_line == 1, Job.batch_id == batch["id"]).values(status="succeeded")
        )
    with session_scope(settings.database_url) as session:
        assert release(session, producer(settings), settings, QUEUE) == 1  # one slot freed: the interactive job
        assert session.get(Job, interactive.get_json()["id"]).released_at is not None
        assert session.scalar(batch_released) == depth


def test_a_file_uploaded_for_fine_tuning_or_another_tenants_file_is_refused(client, keys) -> None:
    fine_tune_file = upload(client, keys["a"], [{"prompt": "a", "completion": "b"}], purpose="fine-tune")
    response = create(client, keys["a"], fine_tune_file)
    assert response.status_code == 422 and response.get_json()["error"]["param"] == "input_file_id"
    mine = upload(client, keys["a"], [chat_line("x")])
    assert create(client, keys["b"], mine).status_code == 404
    assert client.get(f"/v1/files/{mine}/content", headers=auth(keys["b"])).status_code == 404
    assert create(client, keys["a"], mine, completion_window="48h").status_code == 422


def test_the_dashboard_lists_batches_with_their_progress(client, keys, settings) -> None:
    running = create(client, keys["a"], upload(client, keys["a"], [chat_line(f"r{i}") for i in range(3)])).get_json()
    failed = create(client, keys["b"], upload(client, keys["b"], ["{bad"])).get_json()
    with session_scope(settings.database_url) as session:
        session.execute(
            Job.__table__.update().where(Job.batch_id == running["id"], Job.batch_line <= 2).values(status="succeeded")
        )
    admin_login(client, keys["admin"])
    page = client.get("/admin/batches").text
    assert f'<tr data-id="{running["id"]}" data-status="in_progress">' in page
    assert f'<tr data-id="{failed["id"]}" data-status="failed">' in page
    assert 'value="2"' in page and "2 / 3" in page  # two of three lines ended
    only_failed = client.get("/admin/batches?status=failed").text
    assert failed["id"] in only_failed and running["id"] not in only_failed
    assert "No batch is cancelled" in client.get("/admin/batches?status=cancelled").text


def test_finalization_writes_the_files_once_however_many_sweeps_run(client, keys, settings) -> None:
    batch = create(client, keys["a"], upload(client, keys["a"], [chat_line(f"r{i}") for i in range(3)])).get_json()
    output = {"text": "fine", "token_ids": [5, 6], "finish_reason": "eos"}
    with session_scope(settings.database_url) as session:  # what the worker writes when each line succeeds
        ended = {"status": "succeeded", "output": output, "stats": {"prompt_tokens": 4}}
        session.execute(Job.__table__.update().where(Job.batch_id == batch["id"]).values(**ended))
    assert sweep_batches(settings) == 1
    assert sweep_batches(settings) == 0  # a second sweeper (or the next sweep) finds nothing to do
    done = client.get(f"/v1/batches/{batch['id']}", headers=auth(keys["a"])).get_json()
    assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    with session_scope(settings.database_url) as session:
        files = select(func.count()).select_from(StoredFile).where(StoredFile.filename.startswith(batch["id"]))
        assert session.scalar(files) == 1  # the output file; no error file, and no second copy
    content = client.get(f"/v1/files/{done['output_file_id']}/content", headers=auth(keys["a"])).data.decode()
    lines = [json.loads(line) for line in content.splitlines()]
    assert [line["custom_id"] for line in lines] == ["r0", "r1", "r2"]
    body = lines[0]["response"]["body"]
    assert body["choices"][0]["message"]["content"] == "fine" and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_a_retried_create_with_the_same_idempotency_key_finds_its_batch(client, keys, settings) -> None:
    file_id = upload(client, keys["a"], [chat_line("r0"), chat_line("r1")])
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    headers = {**auth(keys["a"]), "Idempotency-Key": "nightly-1"}
    first = client.post("/v1/batches", json=body, headers=headers).get_json()
    again = client.post("/v1/batches", json=body, headers=headers).get_json()
    assert again["id"] == first["id"] and again["request_counts"]["total"] == 2
    assert count(settings) == 2  # one batch's lines, not two
    other = client.post("/v1/batches", json={**body, "metadata": {"x": "y"}}, headers=headers)
    assert other.status_code == 422 and other.get_json()["error"]["param"] == "Idempotency-Key"
    elsewhere = client.post("/v1/batches", json=body, headers={**auth(keys["b"]), "Idempotency-Key": "nightly-1"})
    assert elsewhere.status_code == 404  # another tenant's key space (and a's file is not b's)
