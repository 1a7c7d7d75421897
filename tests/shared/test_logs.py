"""Log lines as an operator reads them: text by default, one JSON object per line with CANVAS_LOG_FORMAT=json,
the job's ids on the lines logged while it is in scope."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading

import pytest

from shared.logs import JobFields, bind_job, configure_logging, formatter


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO, logging.StreamHandler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobFields())
    logger = logging.getLogger("canvas.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines_carry_the_job_in_scope_and_only_there(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(formatter("json"))
    logger.info("before")
    with bind_job(job_id="job_1", tenant="ten_a", model="tiny", attempt=2):
        logger.info("working on %s", "it")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.info("after")

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one JSON object
    assert [line["message"] for line in lines] == ["before", "working on it", "failed", "after"]
    assert {k: lines[1][k] for k in ("job_id", "tenant", "model", "attempt", "level", "logger")} == {
        "job_id": "job_1",
        "tenant": "ten_a",
        "model": "tiny",
        "attempt": 2,
        "level": "INFO",
        "logger": "canvas.test_logs",
    }
    assert "ValueError: boom" in lines[2]["exception"] and lines[2]["job_id"] == "job_1"
    assert "job_id" not in lines[0] and "job_id" not in lines[3]
    assert lines[0]["time"].endswith("+00:00")


def test_text_lines_name_the_job_after_the_message(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(formatter("text"))
    with bind_job(job_id="job_1", tenant="ten_a", model="tiny", attempt=1):
        logger.info("started")
    logger.info("idle")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("canvas.test_logs: started [job_id=job_1 tenant=ten_a model=tiny attempt=1]")
    assert second.endswith("canvas.test_logs: idle")


def test_a_job_bound_in_one_thread_is_not_on_another_threads_lines(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(formatter("json"))
    with bind_job(job_id="job_1"):
        other = threading.Thread(target=logger.info, args=("elsewhere",))
        other.start()
        other.join()
    assert "job_id" not in json.loads(stream.getvalue())


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        formatter("xml")


def test_lines_go_to_the_stderr_of_the_moment_not_a_closed_one(monkeypatch) -> None:
    """configure_logging's handler follows sys.stderr: a stream replaced since (and closed) gets nothing,
    its replacement every line; no 'Logging error' for a line logged after the first stream closed."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        configure_logging("INFO", "text")
        logging.getLogger("canvas.test_logs").info("one")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("canvas.test_logs").info("two")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    assert second.getvalue().rstrip().endswith("canvas.test_logs: two") and "one" not in second.getvalue()
