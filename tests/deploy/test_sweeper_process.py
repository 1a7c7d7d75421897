"""`canvas sweeper` as compose and Kubernetes run it: a real process that publishes the outbox, and stops
with exit status 0 on SIGTERM (docker stop, a rollout) or SIGINT (Ctrl-C), not killed by the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.db import dispose_engine, session_scope
from shared.jobs import create_job, new_job_id
from shared.migrate import upgrade
from shared.models import Job, OutboxMessage
from shared.registry import register_model
from tests.conftest import TINY

BIN = Path(sys.executable).parent


def queue_a_job(url: str) -> int:
    """A job accepted while the broker was away: its outbox row is the sweeper's to publish."""
    with session_scope(url) as session:
        job = Job(id=new_job_id(), tenant_id="t", kind="generate", model=TINY, input={}, input_ids=[1], params={})
        return create_job(session, job).id


def published(url: str, outbox_id: int) -> bool:
    with session_scope(url) as session:
        return session.scalar(select(OutboxMessage.published_at).where(OutboxMessage.id == outbox_id)) is not None


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_sweeper_sweeps_then_stops_cleanly_on_a_signal(
    stop: signal.Signals, deploy_redis: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'canvas.db'}"
    upgrade(url)
    with session_scope(url) as session:
        register_model(session, TINY, tiny_model_dir)
    outbox_id = queue_a_job(url)
    env = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": url,
        "REDIS_URL": deploy_redis,
        "CANVAS_SWEEP_SECONDS": "0.2",
        "CANVAS_LOG_FORMAT": "text",
    }
    process = subprocess.Popen(
        [str(BIN / "canvas"), "sweeper"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not published(url, outbox_id):  # the loop runs: it published the job
            assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=5)[0]
            time.sleep(0.1)
        process.send_signal(stop)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        dispose_engine(url)
    assert process.returncode == 0, output
    assert f"{signal.strsignal(stop)}: stopping after the sweep under way" in output
