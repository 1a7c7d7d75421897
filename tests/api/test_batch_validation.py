"""Batch validation through the app (no worker): a long file answers `validating` and is validated in the
background; a batch whose validator died is validated by another process once its lease expired; a
validator that lost the batch (cancelled, or validated elsewhere) writes nothing; `allow_partial` runs the
good lines and reports the bad ones by number. End to end with the SDK: tests/e2e/test_batches.py."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import update

from api.app import create_app
from api.batch_validation import LeaseLost, claim, recover_abandoned, validate, validate_in_app
from shared.batch_finalizer import sweep_batches
from shared.db import session_scope
from shared.models import Batch, Job, utcnow
from tests.api.test_batches import chat_line, count, create, upload
from tests.conftest import auth


def wait_status(client, key: str, batch_id: str, wanted: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/batches/{batch_id}", headers=auth(key)).get_json()
        if batch["status"] != "validating":
            assert batch["status"] == wanted, batch
            return batch
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} still validating after {timeout}s")


def stored(settings, batch_id: str) -> Batch:
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
        session.expunge(batch)
        return batch


@pytest.fixture
def later_app(settings):
    """An app that validates every batch in the background (batch_inline_lines 0)."""
    app = create_app(settings.with_(batch_inline_lines=0))
    yield app
    app.extensions["canvas.batch_validator"].stop()


def test_a_long_file_answers_validating_and_is_validated_in_the_background(later_app, keys, settings) -> None:
    client = later_app.test_client()
    created = create(client, keys["a"], upload(client, keys["a"], [chat_line(f"r{i}") for i in range(5)]))
    batch = created.get_json()
    assert created.status_code == 200 and batch["status"] == "validating" and batch["in_progress_at"] is None
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    batch = wait_status(client, keys["a"], batch["id"], "in_progress")
    assert batch["in_progress_at"] and batch["request_counts"]["total"] == 5
    assert count(settings, Job.batch_id == batch["id"]) == 5
    bad = create(client, keys["a"], upload(client, keys["a"], [chat_line("ok"), "{bad"])).get_json()
    assert bad["status"] == "validating"
    bad = wait_status(client, keys["a"], bad["id"], "failed")
    assert bad["errors"]["data"][0]["line"] == 2 and bad["error_file_id"] and bad["failed_at"]
    assert count(settings, Job.batch_id == bad["id"]) == 0


def left_validating(app, key: str, settings) -> str:
    """A batch created `validating` by a process whose validator never ran (as if the process died)."""
    app.extensions["canvas.batch_validator"].stop()
    client = app.test_client()
    batch = create(client, key, upload(client, key, [chat_line("r0"), chat_line("r1")])).get_json()
    assert batch["status"] == "validating"
    return batch["id"]


def test_a_batch_whose_validator_died_is_validated_by_another_process(later_app, keys, settings) -> None:
    batch_id = left_validating(later_app, keys["a"], settings)
    other = create_app(settings)
    assert recover_abandoned(other) == 0  # its lease still runs: its validator may be at work
    with session_scope(settings.database_url) as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(validation_lease_until=utcnow()))
    assert recover_abandoned(other) == 1
    batch = stored(settings, batch_id)
    assert batch.status == "in_progress" and batch.total == 2 and batch.validation_lease_until is None
    assert count(settings, Job.batch_id == batch_id) == 2
    assert recover_abandoned(other) == 0


def test_a_validator_that_lost_the_batch_writes_nothing(later_app, keys, settings) -> None:
    batch_id = left_validating(later_app, keys["a"], settings)
    held = stored(settings, batch_id).validation_lease_until
    with session_scope(settings.database_url) as session:
        lease = claim(session, batch_id, held)  # a validator starts on it
        assert lease is not None and claim(session, batch_id, held) is None  # the creator's lease is gone
    cancelled = later_app.test_client().post(f"/v1/batches/{batch_id}/cancel", headers=auth(keys["a"])).get_json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
    with later_app.app_context(), session_scope(settings.database_url) as session, pytest.raises(LeaseLost):
        validate(session, session.get(Batch, batch_id), lease)  # planned, then refused before any write
    assert validate_in_app(later_app, batch_id, lease) is False
    assert stored(settings, batch_id).status == "cancelled" and count(settings, Job.batch_id == batch_id) == 0


def test_allow_partial_runs_the_good_lines_and_reports_the_bad_ones_by_number(client, keys, settings) -> None:
    lines = [chat_line("r0"), "{bad", chat_line("r2"), chat_line("knob", top_p=0.5), chat_line("r4")]
    batch = create(client, keys["a"], upload(client, keys["a"], lines), allow_partial=True).get_json()
    assert batch["status"] == "in_progress" and [e["line"] for e in batch["errors"]["data"]] == [2, 4]
    assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 2}
    assert batch["error_file_id"] is None  # written at the end, with the lines that fail as they run
    assert count(settings, Job.batch_id == batch["id"]) == 3
    output = {"text": "fine", "token_ids": [5], "finish_reason": "eos"}
    with session_scope(settings.database_url) as session:
        jobs = Job.__table__.update().where(Job.batch_id == batch["id"])
        session.execute(jobs.where(Job.batch_line != 3).values(status="succeeded", output=output, stats={}))
        error = {"code": "engine_error", "message": "boom"}
        session.execute(jobs.where(Job.batch_line == 3).values(status="failed", error=error))
    assert sweep_batches(settings) == 1
    done = client.get(f"/v1/batches/{batch['id']}", headers=auth(keys["a"])).get_json()
    assert done["status"] == "completed" and done["request_counts"] == {"total": 5, "completed": 2, "failed": 3}
    content = client.get(f"/v1/files/{done['error_file_id']}/content", headers=auth(keys["a"])).data.decode()
    errors = [json.loads(line) for line in content.splitlines()]
    assert [e["custom_id"] for e in errors] == [None, "r2", "knob"]  # in input order: lines 2, 3, 4
    assert errors[0]["error"]["line"] == 2 and errors[2]["error"]["line"] == 4
    assert errors[1]["response"]["status_code"] >= 400
    # Without a good line there is nothing to run: the batch fails as without allow_partial.
    nothing = create(client, keys["a"], upload(client, keys["a"], ["{bad"]), allow_partial=True).get_json()
    assert nothing["status"] == "failed" and count(settings, Job.batch_id == nothing["id"]) == 0


def test_allow_partial_must_be_a_boolean(client, keys) -> None:
    response = create(client, keys["a"], upload(client, keys["a"], [chat_line("r0")]), allow_partial="yes")
    assert response.status_code == 422 and response.get_json()["error"]["param"] == "allow_partial"


def test_a_batch_whose_file_was_deleted_before_validation_fails_saying_so(later_app, keys, settings) -> None:
    batch_id = left_validating(later_app, keys["a"], settings)
    client = later_app.test_client()
    file_id = stored(settings, batch_id).input_file_id
    assert client.delete(f"/v1/files/{file_id}", headers=auth(keys["a"])).status_code == 204
    with session_scope(settings.database_url) as session:
        session.execute(update(Batch).where(Batch.id == batch_id).values(validation_lease_until=utcnow()))
    assert recover_abandoned(create_app(settings)) == 1
    batch = client.get(f"/v1/batches/{batch_id}", headers=auth(keys["a"])).get_json()
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "invalid_file"
    assert batch["errors"]["data"][0]["line"] is None and "deleted" in batch["errors"]["data"][0]["message"]
