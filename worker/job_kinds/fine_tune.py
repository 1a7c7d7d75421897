"""The `fine_tune` kind's executor: load the base and the data, resume from the last checkpoint, train,
and register the result as a model. Thin over shared/ and worker/training/."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import delete, select
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion

from shared.datasets import parse_dataset
from shared.db import session_scope
from shared.job_kinds.fine_tune import FineTuneOutput, FineTunePlan, result_model_name
from shared.metrics import FINE_TUNE_STEPS
from shared.models import Checkpoint, JobEvent, ModelRecord, StoredFile, utcnow
from shared.registry import describe_model_dir
from worker.job_watch import JobWatch
from worker.lifecycle import ClaimedJob, Outcome, WorkerRuntime, run_stats
from worker.quantized.loader import load_quantized, quantization_of
from worker.training.data import to_example
from worker.training.lora import add_lora, save_adapter
from worker.training.quantize import quantization_config
from worker.training.trainer import Trainer, TrainingCanceled, TrainPlan, freeze_router, plan_steps

log = logging.getLogger(__name__)


class FineTuneExecutor:
    """Trains; a cancel or a lost lease stops it at the next step (its checkpoints stay for a resume)."""

    def canceled_output(self) -> dict[str, Any] | None:
        return None

    def execute(self, job: ClaimedJob, runtime: WorkerRuntime, watch: JobWatch) -> Outcome:
        plan = FineTunePlan.model_validate(job.params)
        inputs = _load_inputs(runtime.settings.database_url, job.id, plan)
        hp = plan.hyperparameters
        model, tokenizer = load_for_training(
            inputs["base_path"], plan.method, hp.lora_rank, hp.lora_alpha, plan.quantization
        )
        examples = [to_example(r, tokenizer) for r in parse_dataset(inputs["data"])]
        validation = (
            [to_example(r, tokenizer) for r in parse_dataset(inputs["validation"])] if inputs["validation"] else None
        )
        total = plan_steps(len(examples), hp.batch_size, hp.epochs, hp.max_steps)
        train_plan = TrainPlan(
            hp.learning_rate, hp.batch_size, total, hp.warmup_steps, hp.checkpoint_every, plan.seed, inputs["eos"]
        )
        trainer = Trainer(
            model, examples, train_plan, eight_bit_optimizer=plan.quantization != "none", validation=validation
        )
        if inputs["checkpoint"] is not None and trainer.restore(inputs["checkpoint"]):
            log.info("job %s resumes from step %d", job.id, trainer.step)
        out_dir = runtime.settings.var_dir / "fine_tunes" / job.id
        try:
            result = trainer.run(
                _metrics_sink(runtime, job.id),
                _checkpoint_sink(runtime.settings.database_url, job.id, runtime.settings.checkpoint_keep),
                out_dir / "checkpoints",
                watch.should_stop,
                runtime.settings.checkpoint_keep,
            )
        except TrainingCanceled:
            return Outcome(stopped=True)
        name = _save_and_register(runtime.settings.database_url, job, plan, model, tokenizer, out_dir)
        output = FineTuneOutput(
            model=name,
            trained_steps=result.steps,
            final_loss=result.losses[-1] if result.losses else None,
            eval_loss=result.eval_loss,
        )
        return Outcome(output=output.model_dump(), stats=run_stats(job))


def _load_inputs(database_url: str, job_id: str, plan: FineTunePlan) -> dict[str, Any]:
    """The base model's path and EOS, the datasets' content, and the last checkpoint (None: start afresh)."""
    with session_scope(database_url) as session:
        base = session.get(ModelRecord, plan.base_model)
        data = session.get(StoredFile, plan.training_file).content
        validation = session.get(StoredFile, plan.validation_file).content if plan.validation_file else None
        last = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc()))
        return {
            "base_path": base.path,
            "eos": base.eos_token_ids[0],
            "data": data,
            "validation": validation,
            "checkpoint": Path(last.path) if last else None,
        }


def load_for_training(path: str, method: str, lora_rank: int, lora_alpha: float, quantization: str) -> tuple[Any, Any]:
    """The base model on this worker's device (quantized if asked), ready to train: LoRA adapters added and
    the base frozen for `lora`, the MoE router frozen either way; and its tokenizer. A base that is a
    quantized checkpoint (`canvas models quantize`) is QLoRA's frozen base, experts included, CPU or GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if quantization_of(path) != "none":
        if method != "lora":  # the API refuses this too
            raise ValueError(f"{path} is quantized ({quantization_of(path)}): only LoRA trains on it")
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = load_quantized(path, torch.device(device), dtype)
    else:
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
        model = add_lora(model, lora_rank, lora_alpha)
    freeze_router(model)
    return model, tokenizer


def _save_and_register(
    database_url: str, job: ClaimedJob, plan: FineTunePlan, model: Any, tokenizer: Any, out_dir: Path
) -> str:
    """Write the adapter (LoRA) or the whole model (full) and register it for the job's tenant."""
    name = result_model_name(plan.base_model, plan.suffix, job.id)
    artifact = out_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    with session_scope(database_url) as session:
        base_record = session.get(ModelRecord, plan.base_model)
        record = ModelRecord(
            name=name,
            tenant_id=job.tenant_id,
            fine_tune_job_id=job.id,
            base_model=plan.base_model,
            canvas_length=base_record.canvas_length,
            max_positions=base_record.max_positions,
            vocab_size=base_record.vocab_size,
            eos_token_ids=base_record.eos_token_ids,
            pad_token_id=base_record.pad_token_id,
            path=base_record.path,
            quantization=base_record.quantization,  # an adapter is served on its (maybe quantized) base
            weight_bytes=base_record.weight_bytes,
        )
        if plan.method == "lora":
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


def _metrics_sink(runtime: WorkerRuntime, job_id: str) -> Any:
    def record(metrics: dict[str, Any]) -> None:  # once a step
        FINE_TUNE_STEPS.inc()
        with session_scope(runtime.settings.database_url) as session:
            session.add(JobEvent(job_id=job_id, type="metrics", data=metrics, created_at=utcnow()))
        runtime.publish(job_id, "metrics", metrics)

    return record


def _checkpoint_sink(database_url: str, job_id: str, keep: int) -> Any:
    """Records a saved checkpoint, and forgets those the trainer pruned (all but the newest `keep`)."""

    def record(step: int, loss: float, path: Path) -> None:
        with session_scope(database_url) as session:
            session.add(Checkpoint(job_id=job_id, step=step, path=str(path.resolve()), train_loss=loss))
            if keep > 0:
                newest = select(Checkpoint.step).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc())
                kept = list(session.scalars(newest.limit(keep)))
                session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step.not_in(kept)))

    return record
