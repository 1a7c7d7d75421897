"""/metrics: Prometheus' scrape of the API (no key: keep it off the public ingress). The counters of this
process, or of every gunicorn worker (PROMETHEUS_MULTIPROC_DIR), and the depth of every queue, read from
Redis now (none when Redis does not answer: the scrape still succeeds)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response
from sqlalchemy import select

from api.state import db_session, events_client
from shared.contracts import TRAIN_QUEUE, WEBHOOK_QUEUE, generation_queue
from shared.metrics import CONTENT_TYPE, Gauges, exposition
from shared.models import ModelRecord

bp = Blueprint("metrics", __name__)
# kombu's Redis transport keeps a queue's messages of priority p > 0 in a list of its own, "<queue>\x06\x16<p>"
PRIORITY_LISTS = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queues() -> list[str]:
    """Every queue a job or delivery waits in: one per base model, the fine-tunes', the webhooks'."""
    bases = db_session().scalars(select(ModelRecord.name).where(ModelRecord.base_model.is_(None)))
    return [*(generation_queue(name) for name in bases), TRAIN_QUEUE, WEBHOOK_QUEUE]


def queue_depths() -> Iterator[tuple[str, str, list[str], list[tuple[list[str], float]]]]:
    names = queues()
    with events_client().pipeline(transaction=False) as pipe:
        for name in names:
            for suffix in PRIORITY_LISTS:
                pipe.llen(name + suffix)
        lengths = pipe.execute()
    step = len(PRIORITY_LISTS)
    depths = [([name], float(sum(lengths[i * step : (i + 1) * step]))) for i, name in enumerate(names)]
    yield "canvas_queue_depth", "Messages waiting in the queue (not yet taken by a worker).", ["queue"], depths


@bp.get("/metrics")
def metrics() -> Response:
    return Response(exposition(Gauges(queue_depths)), content_type=CONTENT_TYPE)
