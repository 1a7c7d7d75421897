"""/v1/fine_tunes: create (validating the dataset), get, list, cancel, metrics events, checkpoints."""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any, Literal

import redis
from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from sqlalchemy import select

from api.auth import authenticate_request, current_principal
from api.bodies import read_json_object
from api.files import get_file
from api.limits import check_active, check_rate
from api.models import visible_model
from api.openapi import describe
from api.response_schemas import CheckpointList, FineTune, FineTuneEventList, FineTuneList
from api.schemas import FineTuneEventsQuery
from api.state import db_session, events_client, publish_after_commit, release_db_session
from api.tokenization import tokenizer_for
from api.webhook_schemas import WebhookTarget
from api.webhooks import check_webhook_url
from shared.contracts import Hyperparameters
from shared.datasets import DatasetError, Record, parse_dataset
from shared.errors import InvalidRequest, NotFound
from shared.job_kinds import JobKind
from shared.jobs import create_job, new_job_id, request_cancel, served_by
from shared.logs import bind
from shared.metrics import JOBS_SUBMITTED
from shared.models import Checkpoint, Job, JobEvent, ModelRecord
from shared.views import iso
from shared.workers import live_workers

log = logging.getLogger(__name__)
bp = Blueprint("fine_tunes", __name__, url_prefix="/v1/fine_tunes")
bp.before_request(authenticate_request)


class FineTuneCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: StrictStr = Field(min_length=1, max_length=200)
    training_file: StrictStr
    validation_file: StrictStr | None = None
    method: Literal["lora", "full"] = "lora"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    quantization: Literal["none", "8bit", "4bit"] = "none"
    seed: StrictInt | None = Field(None, ge=0, le=2**31 - 1)
    suffix: StrictStr | None = Field(None, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")
    webhook: WebhookTarget | None = None


def fine_tune_view(job: Job) -> dict[str, Any]:
    p = job.params
    return {
        "id": job.id,
        "object": "fine_tune",
        "status": job.status,
        "base_model": p["base_model"],
        "training_file": p["training_file"],
        "validation_file": p.get("validation_file"),
        "method": p["method"],
        "hyperparameters": p["hyperparameters"],
        "quantization": p["quantization"],
        "seed": p["seed"],
        "suffix": p.get("suffix"),
        "result_model": (job.output or {}).get("model"),
        "output": job.output,
        "error": job.error,
        "attempts": job.attempts,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def _check_dataset(file_id: str, param: str, base: ModelRecord) -> list[Record]:
    """The file's examples, each fitting `base`'s positions, or a 422 naming `param`. Parsing and tokenizing
    a dataset (up to CANVAS_MAX_FILE_BYTES) takes a while: the request's database session ends first, so no
    connection is held meanwhile."""
    content = get_file(file_id, param).content
    release_db_session()
    try:
        records = parse_dataset(content)
    except DatasetError as exc:
        raise InvalidRequest(f"{param} is not a valid dataset: {exc}", param) from None
    tokenizer = tokenizer_for(base.path)
    for number, record in enumerate(records, start=1):
        prompt = (
            len(tokenizer.encode_chat(list(record.messages)))
            if record.messages
            else len(tokenizer.encode(record.prompt or ""))
        )
        response = len(tokenizer.encode(record.completion)) + 1
        needed = prompt + math.ceil(response / base.canvas_length) * base.canvas_length
        if needed > base.max_positions:
            raise InvalidRequest(
                f"{param}: example {number} needs {needed} positions; {base.name!r} has {base.max_positions}", param
            )
    return records


def _check_quantized_base(base: ModelRecord, body: FineTuneCreate) -> None:
    """A quantized base (`canvas models quantize`) trains LoRA on its frozen quantized weights (QLoRA,
    CPU or GPU): it cannot be fully fine-tuned nor quantized a second time."""
    if base.quantization == "none":
        return
    if body.method != "lora":
        raise InvalidRequest(
            f"{base.name!r} is {base.quantization}-quantized: only method='lora' trains on it", "method"
        )
    if body.quantization != "none":
        raise InvalidRequest(
            f"{base.name!r} is already {base.quantization}-quantized: leave quantization at 'none'", "quantization"
        )


def _require_gpu_trainer(quantization: str) -> None:
    if quantization == "none":
        return
    try:
        workers = [w for w in live_workers(events_client()) if w.get("kind") == "train"]
    except redis.RedisError:
        workers = []
    if not any(w.get("gpu") for w in workers):
        seen = f"{len(workers)} training worker(s) online, none with a GPU" if workers else "no training worker online"
        raise InvalidRequest(
            f"quantization={quantization!r} needs bitsandbytes on a GPU training worker ({seen}); "
            "use quantization='none' on the CPU",
            "quantization",
        )


@bp.post("")
@describe(
    "Create a fine-tune",
    body=FineTuneCreate,
    responses={202: FineTune},
    body_ids={"training_file": "files.upload_file", "validation_file": "files.upload_file"},
)
def create_fine_tune() -> Response:
    body = FineTuneCreate.model_validate(read_json_object())
    principal = current_principal()
    session = db_session()
    base = visible_model(session, body.base_model, "base_model")
    if base.adapter_path:
        raise InvalidRequest(f"{base.name!r} is an adapter; fine-tune its base model {base.base_model!r}", "base_model")
    _check_quantized_base(base, body)
    _require_gpu_trainer(body.quantization)
    if body.webhook is not None:
        check_webhook_url(body.webhook.url, "webhook.url")
    check_rate(principal.tenant_id)  # before the dataset is read and tokenized, the costly part
    records = _check_dataset(body.training_file, "training_file", base)
    if body.validation_file:
        _check_dataset(body.validation_file, "validation_file", base)
    session = db_session()  # a new one: _check_dataset gave the first back
    check_active(session, principal.tenant_id)
    params = body.model_dump(exclude={"webhook"})
    params["seed"] = body.seed if body.seed is not None else secrets.randbelow(2**31)
    params["examples"] = len(records)
    job = Job(
        id=new_job_id(JobKind.FINE_TUNE),
        tenant_id=principal.tenant_id,
        kind=JobKind.FINE_TUNE.value,
        model=base.name,
        input={"training_file": body.training_file, "validation_file": body.validation_file},
        input_ids=[],
        params=params,
        # Events left out: the fine-tune's defaults (fine_tune.succeeded, ...), not a generation job's.
        webhook=body.webhook.model_dump(exclude_unset=True) if body.webhook else None,
    )
    outbox = create_job(session, job)
    served = served_by(session, job.model)  # read before the commit: nothing after it may fail the answer
    session.commit()
    JOBS_SUBMITTED.labels(job.kind, served).inc()
    publish_after_commit(outbox.queue)
    bind(job_id=job.id, model=job.model)
    log.info("fine-tune %s accepted: %s of %s", job.id, body.method, job.model)
    response = jsonify(fine_tune_view(job))
    response.status_code = 202
    response.headers["Location"] = url_for("fine_tunes.get_fine_tune", job_id=job.id)
    return response


def _job(job_id: str) -> Job:
    job = db_session().get(Job, job_id)
    if job is None or job.kind != JobKind.FINE_TUNE or job.tenant_id != current_principal().tenant_id:
        raise NotFound(f"no fine-tune with id {job_id!r}", "id")
    return job


@bp.get("/<job_id>")
@describe("Get a fine-tune", responses={200: FineTune})
def get_fine_tune(job_id: str) -> Response:
    return jsonify(fine_tune_view(_job(job_id)))


@bp.get("")
@describe("List fine-tunes", responses={200: FineTuneList})
def list_fine_tunes() -> Response:
    stmt = select(Job).where(Job.tenant_id == current_principal().tenant_id, Job.kind == JobKind.FINE_TUNE.value)
    rows = db_session().scalars(stmt.order_by(Job.created_at.desc()).limit(100))
    return jsonify({"object": "list", "data": [fine_tune_view(j) for j in rows]})


@bp.post("/<job_id>/cancel")
@describe("Cancel a fine-tune", responses={200: FineTune})
def cancel_fine_tune(job_id: str) -> Response:
    session = db_session()
    job = _job(job_id)
    request_cancel(session, job)
    return jsonify(fine_tune_view(job))


@bp.get("/<job_id>/events")
@describe("Training metrics and status changes", query=FineTuneEventsQuery, responses={200: FineTuneEventList})
def fine_tune_events(job_id: str) -> Response:
    """Training metrics per step (step, loss, learning rate, eval loss, tokens/s) and status changes."""
    job = _job(job_id)
    after = request.args.get("after", "0")
    if not (after.isascii() and after.isdigit()) or len(after) > 18:
        raise InvalidRequest("after must be an event id (an integer)", "after")
    stmt = select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.id > int(after)).order_by(JobEvent.id).limit(1000)
    events = [
        {
            "id": e.id,
            "type": e.type if e.type == "metrics" else "status",
            "at": iso(e.created_at),
            **({"status": e.status} if e.type == "status" else {}),
            **(e.data or {}),
        }
        for e in db_session().scalars(stmt)
    ]
    return jsonify({"object": "list", "data": events})


@bp.get("/<job_id>/checkpoints")
@describe("Saved checkpoints", responses={200: CheckpointList})
def fine_tune_checkpoints(job_id: str) -> Response:
    job = _job(job_id)
    rows = db_session().scalars(select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step))
    return jsonify(
        {
            "object": "list",
            "data": [
                {"object": "checkpoint", "step": c.step, "train_loss": c.train_loss, "created_at": iso(c.created_at)}
                for c in rows
            ],
        }
    )
