"""Running a fine-tune job: claim, load base and data, resume from the last checkpoint, train, register
the result as a model. Thin over shared/ and worker/training/."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from shared.datasets import parse_dataset
from shared.db import session_scope
from shared.events import publish_event
from shared.jobs import claim, get_job, transition
from shared.models import Checkpoint, JobEvent, ModelRecord, StoredFile, utcnow
from shared.registry import describe_model_dir
from shared.settings import Settings
from shared.states import JobStatus
from worker.job_watch import JobWatch
from worker.training.data import to_example
from worker.training.lora import add_lora, save_adapter
from worker.training.quantize import quantization_config
from worker.training.trainer import Trainer, TrainingCanceled, TrainPlan, freeze_router, plan_steps

log = logging.getLogger(__name__)


def result_name(base: str, suffix: str | None, job_id: str) -> str:
    return f"{base}:{suffix or 'ft'}:{job_id}"


def _load_job(settings: Settings, job_id: str) -> dict[str, Any]:
    with session_scope(settings.database_url) as session:
        job = get_job(session, job_id)
        params = dict(job.params)
        base = session.get(ModelRecord, params["base_model"])
        data = session.get(StoredFile, params["training_file"]).content
        validation = (
            session.get(StoredFile, params["validation_file"]).content if params.get("validation_file") else None
        )
        last = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc()))
        return {
            "params": params,
            "base": {"name": base.name, "path": base.path, "eos": base.eos_token_ids[0]},
            "data": data,
            "validation": validation,
            "checkpoint": Path(last.path) if last else None,
        }


def load_for_training(path: str, method: str, hp: dict[str, Any], quantization: str) -> tuple[Any, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = {}
    if quantization != "none":  # the API refuses this unless a GPU training worker is online
        kwargs["quantization_config"] = quantization_config(quantization)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(path, **kwargs)
    if quantization == "none":
        model = model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if method == "lora":
        for param in model.parameters():
            param.requires_grad_(False)
        model = add_lora(model, hp["lora_rank"], hp["lora_alpha"])
    freeze_router(model)
    return model, tokenizer


def run_fine_tune_job(settings: Settings, job_id: str, worker_name: str, redis_client: Any = None) -> str:
    with session_scope(settings.database_url) as session:
        attempt = claim(session, job_id, worker_name, settings.lease_seconds)
    if attempt is None:
        return "skipped"
    job = _load_job(settings, job_id)
    params, hp = job["params"], job["params"]["hyperparameters"]
    watch = JobWatch(settings, job_id, attempt)
    watch.start()
    try:
        model, tokenizer = load_for_training(job["base"]["path"], params["method"], hp, params["quantization"])
        examples = [to_example(r, tokenizer) for r in parse_dataset(job["data"])]
        validation = [to_example(r, tokenizer) for r in parse_dataset(job["validation"])] if job["validation"] else None
        total = plan_steps(len(examples), hp["batch_size"], hp.get("epochs"), hp.get("max_steps"))
        plan = TrainPlan(
            hp["learning_rate"],
            hp["batch_size"],
            total,
            hp["warmup_steps"],
            hp["checkpoint_every"],
            params["seed"],
            job["base"]["eos"],
        )
        trainer = Trainer(
            model, examples, plan, eight_bit_optimizer=params["quantization"] != "none", validation=validation
        )
        if job["checkpoint"] is not None:
            trainer.restore(job["checkpoint"])
            log.info("job %s resumes from step %d", job_id, trainer.step)
        out_dir = settings.var_dir / "fine_tunes" / job_id
        result = trainer.run(
            _metrics_sink(settings, job_id, redis_client),
            _checkpoint_sink(settings, job_id),
            out_dir / "checkpoints",
            watch.should_stop,
        )
        name = _save_and_register(settings, job_id, job, model, tokenizer, out_dir)
    except TrainingCanceled:
        if watch.lease_lost.is_set():
            return "lease lost"
        return _finish(settings, job_id, attempt, JobStatus.CANCELED)
    except Exception as exc:
        log.exception("fine-tune %s failed", job_id)
        return _finish(
            settings, job_id, attempt, JobStatus.FAILED, error={"type": type(exc).__name__, "message": str(exc)[:2000]}
        )
    finally:
        watch.stop()
    output = {
        "model": name,
        "trained_steps": result.steps,
        "final_loss": result.losses[-1] if result.losses else None,
        "eval_loss": result.eval_loss,
    }
    return _finish(settings, job_id, attempt, JobStatus.SUCCEEDED, output=output)


def _save_and_register(
    settings: Settings, job_id: str, job: dict[str, Any], model: Any, tokenizer: Any, out_dir: Path
) -> str:
    params, base = job["params"], job["base"]
    name = result_name(base["name"], params.get("suffix"), job_id)
    artifact = out_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    with session_scope(settings.database_url) as session:
        base_record = session.get(ModelRecord, base["name"])
        record = ModelRecord(
            name=name,
            tenant_id=get_job(session, job_id).tenant_id,
            fine_tune_job_id=job_id,
            base_model=base["name"],
            canvas_length=base_record.canvas_length,
            max_positions=base_record.max_positions,
            vocab_size=base_record.vocab_size,
            eos_token_ids=base_record.eos_token_ids,
            pad_token_id=base_record.pad_token_id,
            path=base_record.path,
        )
        if params["method"] == "lora":
            save_adapter(model, artifact)
            record.adapter_path = str(artifact.resolve())
        else:
            model.save_pretrained(artifact)
            tokenizer.save_pretrained(artifact)
            record.path = str(artifact.resolve())
            for key, value in describe_model_dir(artifact).items():
                setattr(record, key, value)
        session.merge(record)
    return name


def _metrics_sink(settings: Settings, job_id: str, redis_client: Any) -> Any:
    def record(metrics: dict[str, Any]) -> None:
        with session_scope(settings.database_url) as session:
            session.add(JobEvent(job_id=job_id, type="metrics", data=metrics, created_at=utcnow()))
        if redis_client is not None:
            publish_event(redis_client, job_id, "metrics", metrics)

    return record


def _checkpoint_sink(settings: Settings, job_id: str) -> Any:
    def record(step: int, loss: float, path: Path) -> None:
        with session_scope(settings.database_url) as session:
            session.add(Checkpoint(job_id=job_id, step=step, path=str(path.resolve()), train_loss=loss))

    return record


def _finish(settings: Settings, job_id: str, attempt: int, to: JobStatus, **values: Any) -> str:
    with session_scope(settings.database_url) as session:
        done = transition(session, job_id, to, attempt=attempt, finished_at=utcnow(), lease_expires_at=None, **values)
    return to.value if done else "lost"
