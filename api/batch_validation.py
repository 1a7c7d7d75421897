"""Validating a batch: its file's lines planned as jobs, then `validating` -> `in_progress` (a job per good
line) or `failed` (every bad line, with its number, in the error file), in one transaction.

A short file is validated in the create request; a longer one (`batch_inline_lines`) answers `validating` at
once and is validated by this process's BatchValidator thread. Whoever validates holds the batch's
validation lease: a batch whose validator died (its process ended) is validated again by any API process's
validator once the lease expired, and a validator that lost its lease (or whose batch was cancelled
meanwhile) writes nothing. Knows the app (tokenizers, settings), the database and the broker.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.batch_lines import LineError, PlannedLines, plan_lines
from api.state import db_session, publish_after_commit, settings
from shared.batches import BatchStatus, batch_view, insert_lines, request_counts
from shared.db import session_scope
from shared.files import new_file
from shared.models import Batch, Job, StoredFile, utcnow
from shared.webhooks import record_tenant_event

log = logging.getLogger(__name__)
VALIDATION_LEASE = timedelta(minutes=10)  # far longer than validating 50,000 lines takes (docs/benchmarks.md)
MAX_REPORTED_ERRORS = 1000  # in the batch's `errors`; its error file has every bad line
RECOVER_AT_ONCE = 10


class LeaseLost(Exception):
    """Another validator has the batch now, or it is no longer `validating` (cancelled)."""


def claim(session: Session, batch_id: str, held: datetime | None) -> datetime | None:
    """Take the batch's validation lease: from `held` (the lease its creator gave it) or, with None, from
    whoever let it expire. Returns the new lease (committed), or None if someone else has the batch."""
    now = utcnow()
    owner = Batch.validation_lease_until == held if held else Batch.validation_lease_until < now
    lease = now + VALIDATION_LEASE
    stmt = (
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.VALIDATING.value, owner)
        .values(validation_lease_until=lease)
        .execution_options(synchronize_session=False)
    )
    claimed = session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    session.commit()
    return lease if claimed else None


def validate(session: Session, batch: Batch, lease: datetime) -> None:
    """Plan the batch's lines and settle it (in_progress or failed) in the session's transaction, which the
    caller commits. Raises LeaseLost, before writing anything, if the batch is no longer this lease's."""
    source = session.get(StoredFile, batch.input_file_id)
    content = source.content if source is not None else b""
    fields = {"tenant_id": batch.tenant_id, "batch_id": batch.id, "deadline_at": batch.expires_at}
    planned = plan_lines(session, content, batch.endpoint, fields)
    mine = (
        update(Batch)  # first write: takes the row's lock, so no cancel or other validator comes between
        .where(
            Batch.id == batch.id,
            Batch.status == BatchStatus.VALIDATING.value,
            Batch.validation_lease_until == lease,
        )
        .values(validation_lease_until=None)
        .execution_options(synchronize_session=False)
    )
    if session.execute(mine).rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(batch.id)
    batch.validation_lease_until = None
    if source is None:
        planned.errors.append(_no_lines("the input file was deleted before the batch was validated"))
    elif not planned.rows and not planned.errors:
        planned.errors.append(_no_lines(f"file {source.id} holds no request"))
    if planned.errors and not (batch.allow_partial and planned.rows):
        _fail(session, batch, planned)
    else:
        _start(session, batch, planned)


def _no_lines(message: str) -> LineError:
    return LineError(None, "invalid_file", message, "input_file_id")


def _start(session: Session, batch: Batch, planned: PlannedLines) -> None:
    """validating -> in_progress with a job per good line; with allow_partial, the bad lines are counted as
    failed at once and kept (in a file of their own) for the error file written at finalization."""
    now = utcnow()
    batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS.value, now
    batch.total, batch.failed = len(planned.rows) + len(planned.errors), len(planned.errors)
    if planned.errors:
        batch.errors = [e.as_error() for e in planned.errors[:MAX_REPORTED_ERRORS]]
        batch.invalid_file_id = _store_errors(session, batch, planned, "invalid_lines")
    insert_lines(session, planned.rows, now)


def _fail(session: Session, batch: Batch, planned: PlannedLines) -> None:
    """A batch whose file has bad lines (and no allow_partial): `failed`, with every bad line in its error
    file, and no job."""
    batch.status, batch.failed_at = BatchStatus.FAILED.value, utcnow()
    batch.errors = [e.as_error() for e in planned.errors[:MAX_REPORTED_ERRORS]]
    batch.error_file_id = _store_errors(session, batch, planned, "errors")
    record_tenant_event(session, batch.tenant_id, "batch.failed", batch_view(batch, request_counts(session, batch)))


def _store_errors(session: Session, batch: Batch, planned: PlannedLines, name: str) -> str:
    content = "".join(json.dumps(e.as_file_line()) + "\n" for e in planned.errors).encode()
    error_file = new_file(batch.tenant_id, "batch_output", f"{batch.id}_{name}.jsonl", content)
    session.add(error_file)
    session.flush()
    return error_file.id


def release_now(batch_id: str) -> None:
    """Start the batch's first lines now (as far as its queues have room) rather than at the next sweep; if
    the broker or the database does not answer, the sweeper does it. In sessions of its own: the caller's
    (whose batch the answer is made from) is left as it is."""
    try:
        with session_scope(settings().database_url) as session:
            queues = session.scalars(select(Job.queue).where(Job.batch_id == batch_id).distinct()).all()
    except Exception:
        log.exception("could not release batch jobs now; the sweeper will")
        return
    for queue_name in queues:
        publish_after_commit(queue_name)


def validate_in_app(app: Flask, batch_id: str, held: datetime | None) -> bool:
    """Claim and validate one batch in an app context of its own (a background thread's). Returns whether
    this call settled it."""
    with app.app_context():
        session = db_session()
        lease = claim(session, batch_id, held)
        batch = session.get(Batch, batch_id) if lease else None
        if lease is None or batch is None:
            return False
        try:
            validate(session, batch, lease)
        except LeaseLost:
            session.rollback()
            log.info("batch %s: validated elsewhere or cancelled meanwhile", batch_id)
            return False
        session.commit()
        log.info("batch %s validated: %d lines, status %s", batch_id, batch.total, batch.status)
        if batch.status == BatchStatus.IN_PROGRESS.value:
            release_now(batch_id)
        return True


def recover_abandoned(app: Flask) -> int:
    """Validate the `validating` batches whose validator let the lease expire (its process died). Returns
    how many this call settled."""
    with app.app_context():
        stmt = select(Batch.id).where(
            Batch.status == BatchStatus.VALIDATING.value, Batch.validation_lease_until < utcnow()
        )
        due = list(db_session().scalars(stmt.limit(RECOVER_AT_ONCE)))
    return sum(validate_in_app(app, batch_id, None) for batch_id in due)


class BatchValidator(threading.Thread):
    """Validates the batches its process created with `validating` (in order), and, with `recover`, every
    `settings.sweep_seconds` the batches other validators abandoned. Started on first use or by the app."""

    def __init__(self, app: Flask, *, recover: bool) -> None:
        super().__init__(name="canvas-batch-validator", daemon=True)
        self.app, self.recover = app, recover
        self.period = app.extensions["canvas.settings"].sweep_seconds
        self.pending: queue.Queue[tuple[str, datetime] | None] = queue.Queue()
        self._stopped = threading.Event()
        self._starting = threading.Lock()

    def submit(self, batch_id: str, lease: datetime) -> None:
        self.pending.put((batch_id, lease))
        with self._starting:
            if not self.is_alive() and not self._stopped.is_set():
                self.start()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                item = self.pending.get(timeout=self.period)
            except queue.Empty:
                item = None
            if self._stopped.is_set():
                return
            try:
                if item is not None:
                    validate_in_app(self.app, *item)
                elif self.recover:
                    recover_abandoned(self.app)
            except Exception:  # a database outage must not end the thread; the lease brings the batch back
                log.exception("batch validation failed")

    def stop(self) -> None:
        self._stopped.set()
        self.pending.put(None)
