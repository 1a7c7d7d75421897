"""Webhook delivery in-process against a real receiver: endpoint auto-disable, the SSRF check at delivery."""

from __future__ import annotations

import socket

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


def test_a_delivery_goes_to_the_address_the_guard_checked_whatever_dns_says_next(settings, monkeypatch) -> None:
    """DNS rebinding: the name answers 127.0.0.1 (allowed) to the guard, then an inside address that is
    not allowed (127.0.0.2, where nothing listens). DNS is outside our control, so `getaddrinfo` is faked
    for that one name; the socket, HTTP and the receiver are real."""
    receiver = Receiver()
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"])

    def rebinding(host, port, *args, **kwargs):
        if host != "hooks.example":
            return real(host, port, *args, **kwargs)
        return real(next(answers, "127.0.0.2"), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        url = receiver.script("/pinned").replace("127.0.0.1", "hooks.example")
        message_id, _ = message_for(settings, url)
        assert deliver(settings.with_(webhook_allow="127.0.0.1/32"), message_id) == "delivered"
        [received] = receiver.at("/pinned")
        assert received.headers["host"] == url.split("/")[2]  # the URL's name, not the address
        assert next(answers, None) is None  # the guard did resolve the name (and got the allowed answer)
    finally:
        receiver.close()
