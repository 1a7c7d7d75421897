"""Webhook delivery in-process against a real receiver: endpoint auto-disable, the SSRF check at delivery."""

from __future__ import annotations

from shared.db import session_scope
from shared.models import Job, WebhookEndpoint, WebhookMessage
from shared.webhooks import new_secret, record_event
from tests.conftest import TINY
from tests.e2e.receiver import Answer, Receiver
from worker.webhooks import deliver


def message_for(settings, url: str) -> tuple[str, str]:
    with session_scope(settings.database_url) as session:
        session.add(Job(id="job_w", tenant_id="t", kind="generate", model=TINY, input={}, input_ids=[2], params={}))
        session.add(WebhookEndpoint(id="we_1", tenant_id="t", url=url, events=["job.succeeded"], secret=new_secret()))
        session.flush()
        [message] = record_event(session, session.get(Job, "job_w"), "job.succeeded", {"id": "job_w"})
        return message.id, "we_1"


def test_an_endpoint_failing_past_the_limit_is_disabled(settings) -> None:
    receiver = Receiver()
    try:
        message_id, endpoint_id = message_for(settings, receiver.script("/bad", Answer(500)))
        strict = settings.with_(webhook_disable_after_seconds=-1.0)  # any failing time is too long
        assert deliver(strict, message_id) == "retrying"
        with session_scope(settings.database_url) as session:
            endpoint = session.get(WebhookEndpoint, endpoint_id)
            assert endpoint.status == "disabled"
            assert "every delivery failed" in endpoint.disabled_reason
        with session_scope(settings.database_url) as session:  # the next attempt is not sent
            session.get(WebhookMessage, message_id).next_attempt_at = None
            session.get(WebhookMessage, message_id).status = "pending"
        assert deliver(strict, message_id) == "failed"
        assert len(receiver.at("/bad")) == 1
    finally:
        receiver.close()


def test_the_ssrf_guard_is_checked_again_at_delivery(settings) -> None:
    receiver = Receiver()
    try:
        message_id, _ = message_for(settings, receiver.script("/inside"))
        assert deliver(settings.with_(webhook_allow=""), message_id) == "retrying"
        assert receiver.at("/inside") == []
        with session_scope(settings.database_url) as session:
            assert session.get(WebhookMessage, message_id).status == "pending"
    finally:
        receiver.close()
