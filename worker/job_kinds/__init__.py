"""The worker's side of the job kinds: one executor per kind, looked up by `executor_for` (which raises
on a kind no module defines). Executors are built on first use, so a webhook-only process imports none
of them and a serving worker does not import the trainer until a fine-tune arrives."""

from __future__ import annotations

from importlib import import_module

from shared.job_kinds import JobKind, kind_spec
from worker.lifecycle import Executor

# kind -> "module:class" of its executor
EXECUTORS: dict[JobKind, str] = {
    JobKind.GENERATE: "worker.job_kinds.generate:GenerateExecutor",
    JobKind.INFILL: "worker.job_kinds.infill:InfillExecutor",
    JobKind.SUDOKU: "worker.job_kinds.sudoku:SudokuExecutor",
    JobKind.FINE_TUNE: "worker.job_kinds.fine_tune:FineTuneExecutor",
}
_built: dict[JobKind, Executor] = {}


def executor_for(kind: str) -> Executor:
    """The executor of `kind`; raises UnknownJobKind for a kind no module defines."""
    spec = kind_spec(kind)
    if spec.kind not in _built:
        module, name = EXECUTORS[spec.kind].split(":")
        _built[spec.kind] = getattr(import_module(module), name)()
    return _built[spec.kind]
