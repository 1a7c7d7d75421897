"""/metrics: Prometheus' scrape of the API. The counters of this process, or of every gunicorn worker
(PROMETHEUS_MULTIPROC_DIR), and the depth of every queue, read from Redis and the jobs table now (none when
Redis does not answer: the scrape still succeeds).

No API key: with CANVAS_METRICS_TOKEN set, a scrape must send it as a bearer token (401 otherwise); without
it, anyone who reaches the port may scrape (keep /metrics off the public ingress then)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from flask import Blueprint, Response, request
from sqlalchemy import select

from api.state import db_session, events_client, settings
from shared.contracts import TRAIN_QUEUE, WEBHOOK_QUEUE, generation_queue
from shared.errors import Unauthorized
from shared.fairness import waiting_by_queue
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
    held = waiting_by_queue(db_session())  # jobs the fair publisher has not released yet
    depths = [([n], float(sum(lengths[i * step : (i + 1) * step]) + held[n])) for i, n in enumerate(names)]
    help_text = "Jobs or deliveries waiting for a worker: in the broker's queue, or held for fair release."
    yield "canvas_queue_depth", help_text, ["queue"], depths


def require_metrics_token() -> None:
    """Raise Unauthorized (401) unless the request sends the metrics token (compared in constant time), when
    one is set."""
    token = settings().metrics_token
    if not token:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <token>', the token of CANVAS_METRICS_TOKEN")


@bp.get("/metrics")
def metrics() -> Response:
    require_metrics_token()
    return Response(exposition(Gauges(queue_depths)), content_type=CONTENT_TYPE)
