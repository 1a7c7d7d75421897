"""Webhook delivery in-process against real receivers: endpoint auto-disable, the SSRF check at delivery, the
overall deadline and the read cap, Retry-After clamping, leases that end mid-delivery, replay during one."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest

from shared.db import session_scope
from shared.keys import create_key
from shared.models import Job, WebhookAttempt, WebhookEndpoint, WebhookMessage, utcnow
from shared.webhook_dispatch import recover_stalled
from shared.webhooks import new_secret, record_event
from tests.conftest import TINY, auth
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


class RawReceiver:
    """A receiver that misbehaves below HTTP: `answer(connection)` writes whatever it likes, as slowly as
    it likes, after the request has been read. Counts the bytes it managed to send."""

    def __init__(self, answer) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/raw"
        self.answer, self.sent, self.closed = answer, 0, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)  # the request (small enough for one read)
            try:
                for chunk in self.answer(self):
                    connection.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                pass  # the sender hung up: what a deadline does

    def close(self) -> None:
        self.closed.set()
        self.server.close()


def trickle(receiver: RawReceiver):
    """A status line one byte every 0.2 s, for at most 8 s: no single read waits a full second."""
    for byte in b"HTTP/1.1 200 OK\r\n"[:40]:
        if receiver.closed.is_set():
            return
        time.sleep(0.2)
        yield bytes([byte])


def endless_body(receiver: RawReceiver):
    """A 200 whose chunked body goes on (for at most 8 s)."""
    yield b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not receiver.closed.is_set():
        yield b"10000\r\n" + b"x" * 0x10000 + b"\r\n"


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_deadline(settings) -> None:
    """webhook_timeout_seconds (1 s here) bounds the whole POST, not each read."""
    settings = settings.with_(webhook_timeout_seconds=1.0)
    receiver = RawReceiver(trickle)
    try:
        message_id, _ = message_for(settings, receiver.url)
        started = time.monotonic()
        assert deliver(settings, message_id) == "retrying"
        assert time.monotonic() - started < 3.5  # a timeout per read would wait 3.4 s of trickle and a 1 s read
        with session_scope(settings.database_url) as session:
            [attempt] = session.query(WebhookAttempt).filter_by(message_id=message_id).all()
            assert "within the 1 s deadline" in attempt.error and attempt.status_code is None
            assert session.get(WebhookMessage, message_id).status == "pending"
    finally:
        receiver.close()


def test_only_the_start_of_an_answers_body_is_read(settings) -> None:
    receiver = RawReceiver(endless_body)
    try:
        message_id, _ = message_for(settings, receiver.url)
        started = time.monotonic()
        assert deliver(settings, message_id) == "delivered"
        assert time.monotonic() - started < 4.0  # the body goes on for 8 s
        with session_scope(settings.database_url) as session:
            [attempt] = session.query(WebhookAttempt).filter_by(message_id=message_id).all()
        assert attempt.response_excerpt is not None and 0 < len(attempt.response_excerpt) <= 500
    finally:
        receiver.close()


def test_the_lease_outlasts_the_deadline(settings) -> None:
    """A delivery cut off at its deadline still holds its lease: no sweep hands the message to another."""
    receiver = RawReceiver(trickle)
    try:
        message_id, _ = message_for(settings, receiver.url)
        delivery = threading.Thread(target=deliver, args=(settings, message_id))
        delivery.start()
        time.sleep(settings.webhook_timeout_seconds + 0.3)  # past the POST's deadline
        with session_scope(settings.database_url) as session:
            assert recover_stalled(session, settings.webhook_schedule) == 0
        delivery.join(5)
        with session_scope(settings.database_url) as session:
            assert session.get(WebhookMessage, message_id).attempts == 1
    finally:
        receiver.close()


@pytest.mark.parametrize("retry_after", ["999999999999", "99999999999999999999999", "²"])
def test_an_absurd_retry_after_is_clamped_and_the_endpoint_still_disabled(settings, retry_after) -> None:
    receiver = Receiver()
    try:
        url = receiver.script("/later", Answer(503, headers={"Retry-After": retry_after}))
        message_id, endpoint_id = message_for(settings, url)
        strict = settings.with_(webhook_disable_after_seconds=-1.0)
        assert deliver(strict, message_id) == "retrying"
        with session_scope(settings.database_url) as session:
            assert session.get(WebhookEndpoint, endpoint_id).status == "disabled"
            message = session.get(WebhookMessage, message_id)
            assert message.next_attempt_at <= utcnow() + timedelta(days=1)
    finally:
        receiver.close()


def test_a_delivery_that_outlived_its_lease_does_not_overwrite_the_newer_result(settings) -> None:
    """The first delivery hangs; its lease ends (made to end now, rather than waited for), the sweeper
    recovers the message and a second delivery gets a 200. The first then gets its 500: logged, but the
    message stays delivered (before: it went back to pending and was sent a third time)."""
    settings = settings.with_(webhook_timeout_seconds=5.0)
    receiver = Receiver()
    try:
        url = receiver.script("/twice", Answer(500, delay=2.0), Answer(200))
        message_id, _ = message_for(settings, url)
        outcomes: list[str] = []
        first = threading.Thread(target=lambda: outcomes.append(deliver(settings, message_id)))
        first.start()
        receiver.wait_for("/twice", 1)
        with session_scope(settings.database_url) as session:
            session.get(WebhookMessage, message_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        with session_scope(settings.database_url) as session:
            assert recover_stalled(session, settings.webhook_schedule) == 1
        assert deliver(settings, message_id) == "delivered"
        first.join(10)
        assert outcomes == ["superseded"]
        with session_scope(settings.database_url) as session:
            message = session.get(WebhookMessage, message_id)
            assert (message.status, message.attempts, message.last_status_code) == ("delivered", 2, 200)
            log = session.query(WebhookAttempt).filter_by(message_id=message_id).order_by(WebhookAttempt.id)
            logged = sorted((a.attempt, a.status_code or 0) for a in log)
        # Both attempts are in the log, and so is the sweeper's note that attempt 1 outlived its lease.
        assert logged == [(1, 0), (1, 500), (2, 200)]
    finally:
        receiver.close()


def test_replaying_a_message_while_it_is_delivered_is_refused_and_keeps_its_attempts(settings) -> None:
    from api.app import create_app

    settings = settings.with_(webhook_timeout_seconds=5.0)
    with session_scope(settings.database_url) as session:
        _, key = create_key(session, "replayer", tenant_id="t")
    receiver = Receiver()
    try:
        message_id, endpoint_id = message_for(settings, receiver.script("/busy", Answer(200, delay=1.5)))
        delivery = threading.Thread(target=deliver, args=(settings, message_id))
        delivery.start()
        receiver.wait_for("/busy", 1)
        client = create_app(settings).test_client()
        replay = client.post(f"/v1/webhook_endpoints/{endpoint_id}/deliveries/{message_id}/replay", headers=auth(key))
        assert replay.status_code == 409, replay.get_json()
        assert "being delivered" in replay.get_json()["error"]["message"]
        delivery.join(10)
        with session_scope(settings.database_url) as session:
            message = session.get(WebhookMessage, message_id)
            assert (message.status, message.attempts) == ("delivered", 1)
        again = client.post(f"/v1/webhook_endpoints/{endpoint_id}/deliveries/{message_id}/replay", headers=auth(key))
        assert again.status_code == 200 and again.get_json()["data"][0]["status"] == "pending"
    finally:
        receiver.close()


def test_an_attempt_that_fails_before_its_post_counts_and_the_message_fails_after_the_schedule(settings) -> None:
    """The webhook worker holds a sealing key that does not open the endpoint's secret (a misconfigured
    deploy): every delivery raises after its claim, before the POST, and records nothing. Each recovered
    claim is an attempt in the log; past the schedule (one retry here) the message is `failed`, not
    retried forever."""
    from shared import sealing

    receiver = Receiver()
    sealing.configure(sealing.new_key())  # the API seals the endpoint's secret with this key
    try:
        message_id, _ = message_for(settings, receiver.script("/never"))
        sealing.configure(sealing.new_key())  # the webhook worker was given another one
        settings = settings.with_(webhook_schedule=(0.0,))
        for attempt in (1, 2):
            with pytest.raises(sealing.SealingError):
                deliver(settings, message_id)
            with session_scope(settings.database_url) as session:
                message = session.get(WebhookMessage, message_id)
                assert (message.status, message.attempts) == ("delivering", attempt)
                message.lease_expires_at = utcnow() - timedelta(seconds=1)  # its lease ends (not waited for)
            with session_scope(settings.database_url) as session:
                assert recover_stalled(session, settings.webhook_schedule) == 1
        assert deliver(settings, message_id) == "skipped"  # failed: no third claim
        with session_scope(settings.database_url) as session:
            message = session.get(WebhookMessage, message_id)
            attempts = session.query(WebhookAttempt).filter_by(message_id=message_id).order_by(WebhookAttempt.id)
            logged = [(a.attempt, a.status_code, a.error) for a in attempts]
        assert (message.status, message.attempts, message.lease_expires_at) == ("failed", 2, None)
        assert [(n, code) for n, code, _ in logged] == [(1, None), (2, None)]
        assert "without a result within its lease" in logged[0][2] and "no attempt left" in logged[1][2]
        assert receiver.at("/never") == []
    finally:
        sealing.configure("")
        receiver.close()


def test_a_delivery_whose_claim_meets_a_database_outage_comes_again(settings) -> None:
    """The claim cannot reach the database: the task raises ClaimFailed, which the webhook task retries with
    backoff, rather than ending (acked, the message would wait out its whole dispatch grace)."""
    from shared.contracts import WEBHOOK_TASK
    from shared.local_redis import free_port
    from shared.queue import ClaimFailed
    from worker.webhook_app import create_webhook_app

    down = settings.with_(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone")
    with pytest.raises(ClaimFailed, match="could not be claimed"):
        deliver(down, "msg_any")
    task = create_webhook_app(down).tasks[WEBHOOK_TASK]
    assert ClaimFailed in task.autoretry_for and task.max_retries is None
