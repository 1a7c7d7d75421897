"""SQLAlchemy 2.0 models. Alembic migrations (migrations/) are the only source of the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.sealing import SealedString
from shared.states import JobStatus, Lane

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


STATUS_CHECK = "status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus))
LANE_CHECK = "lane IN ({})".format(", ".join(f"'{lane.value}'" for lane in Lane))


class ApiKey(Base):
    """A bearer key, stored as a SHA-256 hash. The key itself is shown once, at creation."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key in listings
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ModelRecord(Base):
    """A servable model: a local Hugging Face-format directory, with facts the API needs to validate jobs."""

    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    canvas_length: Mapped[int] = mapped_column(Integer)
    max_positions: Mapped[int] = mapped_column(Integer)
    vocab_size: Mapped[int] = mapped_column(Integer)
    eos_token_ids: Mapped[list[int]] = mapped_column(JSON)
    pad_token_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    tenant_id: Mapped[str | None] = mapped_column(String(64))  # None: every tenant may use it
    base_model: Mapped[str | None] = mapped_column(String(200))  # for an adapter: the model it adapts
    adapter_path: Mapped[str | None] = mapped_column(Text)  # a LoRA adapter served on top of base_model
    fine_tune_job_id: Mapped[str | None] = mapped_column(String(40))
    # How the weights are stored (none | nf4 | int8 | fp8) and their bytes on disk (0007)
    quantization: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    weight_bytes: Mapped[int | None] = mapped_column(BigInteger)


class Job(Base):
    """One job. This row, not Celery's result backend, is the source of truth for its state."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(STATUS_CHECK, name="status"),
        CheckConstraint(LANE_CHECK, name="lane"),
        # The fair publisher (shared/fairness.py) counts the released jobs in flight; the sweep probes queues (0008).
        Index("ix_jobs_release", "queue", "status", "released_at", "tenant_id", "lane", "priority", "created_at"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        # The admin dashboard lists every tenant's jobs newest first, filtered by one column (0004).
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        Index("ix_jobs_model_created", "model", "created_at", "id"),
        Index("ix_jobs_kind_created", "kind", "created_at", "id"),
        Index("ix_jobs_finished", "finished_at"),
        Index("ix_jobs_status_deadline", "status", "deadline_at"),  # the sweeper expires overdue queued jobs (0005)
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index("ix_jobs_batch_status", "batch_id", "status"),  # a batch's counts, release and finalization (0008)
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)  # what the client sent: prompt, messages or ids
    input_ids: Mapped[list[int]] = mapped_column(JSON)  # the tokenized prompt the worker runs
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # defaults filled in, seed chosen
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # per-job target: {"url", "events"}
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # not started by then: expired
    # A line of a batch (0008): its batch, the client's custom_id and its line in the input file. Batch
    # jobs are in the `batch` lane of the fair publisher (shared/fairness.py).
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    custom_id: Mapped[str | None] = mapped_column(String(512))
    batch_line: Mapped[int | None] = mapped_column(Integer)
    # Fair release (0008): the broker queue its kind routes it to; its priority among its tenant's own
    # queued jobs (higher first); its lane (interactive, or batch: below every interactive job); and when
    # its current delivery was released to the broker (None while it waits in SQL; cleared by a requeue).
    queue: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lane: Mapped[str] = mapped_column(String(16), default=Lane.INTERACTIVE.value, server_default="interactive")
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# Jobs waiting in SQL for release, and the two partial indexes over them alone (0012): a release pass reads
# one entry per tenant and lane (its oldest) and a tenant's next jobs in release order, however many wait.
# Queries must repeat WAITING literally (not with bound values) for either backend to use them.
WAITING = f"status = '{JobStatus.QUEUED.value}' AND released_at IS NULL"
Index(
    "ix_jobs_waiting_oldest", Job.queue, Job.tenant_id, Job.lane, Job.created_at,
    postgresql_where=text(WAITING), sqlite_where=text(WAITING),
)  # fmt: skip
Index(
    "ix_jobs_waiting_next", Job.queue, Job.tenant_id, Job.lane, Job.priority.desc(), Job.created_at, Job.batch_line,
    Job.id, postgresql_where=text(WAITING), sqlite_where=text(WAITING),
)  # fmt: skip


class JobEvent(Base):
    """An append-only timeline entry: every status transition, with its time."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(64))  # e.g. "status", "requeued"
    status: Mapped[str | None] = mapped_column(String(16))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxMessage(Base):
    """A task to publish, written in the job's transaction and published only after it commits."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_unpublished", "published_at", "id"),
        Index("ix_outbox_job", "job_id"),  # whether a batch job was released (0008)
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


ENDPOINT_STATUS_CHECK = "status IN ('enabled', 'disabled')"
MESSAGE_STATUS_CHECK = "status IN ('pending', 'delivering', 'delivered', 'failed')"


class WebhookEndpoint(Base):
    """A tenant's receiver. The secret signs deliveries; during a rotation the previous one signs too."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (CheckConstraint(ENDPOINT_STATUS_CHECK, name="status"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(SealedString)  # sealed at rest when keys are configured
    previous_secret: Mapped[str | None] = mapped_column(SealedString)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="enabled")
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TenantWebhookSecret(Base):
    """The secret that signs deliveries to per-job webhook targets of a tenant."""

    __tablename__ = "tenant_webhook_secrets"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(SealedString)  # sealed at rest when keys are configured
    previous_secret: Mapped[str | None] = mapped_column(SealedString)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookMessage(Base):
    """One event for one destination. Its id is the `webhook-id`, stable across retries and replays."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        CheckConstraint(MESSAGE_STATUS_CHECK, name="status"),
        Index("ix_webhook_messages_due", "status", "next_attempt_at"),
        Index("ix_webhook_messages_job", "job_id", "created_at"),
        Index("ix_webhook_messages_endpoint", "endpoint_id", "created_at"),
        Index("ix_webhook_messages_created", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str | None] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """Every delivery attempt, logged: status code, latency, error, a response excerpt."""

    __tablename__ = "webhook_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoredFile(Base):
    """An uploaded file (a fine-tuning dataset), kept in the database so every worker can read it."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(300))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    lines: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Checkpoint(Base):
    """A saved training state of a fine-tune (files on the training volume), resumable after a crash."""

    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    train_loss: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


BATCH_STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)
BATCH_STATUS_CHECK = "status IN ({})".format(", ".join(f"'{s}'" for s in BATCH_STATUSES))


class Batch(Base):
    """An OpenAI-style batch: an input file whose every line became a job (`jobs.batch_id`), and once they
    all ended, an output file and an error file. Counts are written at finalization; before, they are
    counted from the jobs."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(BATCH_STATUS_CHECK, name="status"),
        Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_batches_status", "status"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency"),  # 0010
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    batch_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # the input's bad lines, if any
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))  # a retried create finds its batch (0010)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # 0011: bad lines left out instead of failing the batch, the file of those lines (merged into the error
    # file at finalization), and the lease of whoever validates a `validating` batch (api/batch_validation.py).
    allow_partial: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    invalid_file_id: Mapped[str | None] = mapped_column(String(40))
    validation_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
