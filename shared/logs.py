"""Logging for every Canvas process: text (the default) or one JSON object per line (CANVAS_LOG_FORMAT=json),
with the job in scope (`job_id`, `tenant`, `model`, `attempt`) on every line logged while it is bound.

`configure_logging` sets up the root logger once per process (the CLI, the API under werkzeug or
gunicorn, each Celery worker through Celery's `setup_logging` signal). `bind_job` binds the job's fields
for the current thread or task (context variables); lines logged elsewhere (the engine's thread) carry
none. Knows nothing of Flask or Celery.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

JOB_FIELDS = ("job_id", "tenant", "model", "attempt")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_job: ContextVar[dict[str, Any] | None] = ContextVar("canvas_job", default=None)


def bound() -> dict[str, Any]:
    """The job fields bound now (empty when no job is in scope)."""
    return dict(_job.get() or {})


def bind(**fields: Any) -> None:
    """Add fields (those not None) to the current scope; `clear()` ends it (a request's teardown)."""
    _job.set({**bound(), **{k: v for k, v in fields.items() if v is not None}})


def clear() -> None:
    _job.set(None)


@contextmanager
def bind_job(**fields: Any) -> Iterator[None]:
    """Bind `fields` (job_id, tenant, model, attempt) for the lines logged inside the block."""
    token = _job.set({**bound(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _job.reset(token)


class JobFields(logging.Filter):
    """Puts the bound job fields on each record (`record.job`), for the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = bound()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with the job's fields after the message when one is in scope."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job = getattr(record, "job", None)
        if not job:
            return line
        fields = " ".join(f"{k}={job[k]}" for k in JOB_FIELDS if k in job)
        head, newline, rest = line.partition("\n")  # a traceback stays below the first line
        return f"{head} [{fields}]{newline}{rest}"


class AccessFields(logging.Filter):
    """gunicorn's access lines: the request's method, path, status, duration and bytes sent as fields of
    their own (`record.http`), taken from the atoms gunicorn logs the line with (its `access_log_format`'s
    %(m)s, %(U)s, ...). Knows gunicorn's atom names, nothing else of it."""

    ATOMS = {"method": "m", "path": "U", "status": "s", "duration_ms": "D", "bytes": "B", "remote": "h"}

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, Mapping) and "s" in atoms:
            http = {name: atoms.get(atom) for name, atom in self.ATOMS.items()}
            for name in ("status", "bytes", "duration_ms"):
                http[name] = int(http[name]) if str(http[name]).isdigit() else None
            if http["duration_ms"] is not None:
                http["duration_ms"] = round(http["duration_ms"] / 1000, 3)  # gunicorn's D: microseconds
            record.http = http
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the job's fields, a
    request's `http` fields (gunicorn's access lines) and the exception's traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **(getattr(record, "job", None) or {}),
        }
        if http := getattr(record, "http", None):
            entry["http"] = http
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {log_format!r} (text or json)")


class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever `sys.stderr` is when a record is emitted, not to the
    stream it was set up with: a process that replaces stderr later (a test's capture, a daemon that
    redirects it) still gets every line, and none goes to a stream closed since."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:  # logging.StreamHandler.__init__ and setStream assign it
        pass


def configure_logging(level: str | int = "INFO", log_format: str = "text") -> None:
    """Send the root logger's records to stderr (the one of the moment: `StderrHandler`) in `log_format`,
    replacing handlers set up before (a second call re-configures), Python's warnings too. Loggers with
    handlers of their own (gunicorn's) are left alone. In JSON, progress bars (transformers' weight
    loading) are turned off: a bar is not a line of JSON."""
    handler = StderrHandler()
    handler.setFormatter(formatter(log_format))
    handler.addFilter(JobFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    if log_format == "json":
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
        if (transformers := sys.modules.get("transformers")) is not None:  # imported already: tell it
            transformers.utils.logging.disable_progress_bar()


def gunicorn_logconfig(log_format: str, level: str | int = "INFO") -> dict[str, Any]:
    """A `logconfig_dict` for gunicorn (deploy/gunicorn.conf.py), so that its own lines, the master's and
    the workers' error lines and every access line, come in the app's format to stderr. `level` is the
    error lines' (CANVAS_LOG_LEVEL); access lines are INFO, always logged."""
    formatter(log_format)  # an unknown format fails here, naming itself
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"job": {"()": JobFields}, "access": {"()": AccessFields}},
        "formatters": {"canvas": {"()": JsonFormatter if log_format == "json" else TextFormatter}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "canvas",
                "filters": ["job", "access"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }
