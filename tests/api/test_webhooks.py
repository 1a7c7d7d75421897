"""Webhook endpoints, secrets and the SSRF guard through the API (no delivery here: see tests/e2e)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import make_url

from api.app import create_app
from shared.db import session_scope
from shared.models import WebhookMessage
from tests.conftest import TINY, auth


def test_endpoint_lifecycle(client, keys) -> None:
    created = client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook"}, headers=auth(keys["a"]))
    assert created.status_code == 201
    endpoint = created.get_json()
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["events"] == ["job.succeeded", "job.failed", "job.canceled", "job.expired"]
    assert endpoint["status"] == "enabled"
    path = f"/v1/webhook_endpoints/{endpoint['id']}"
    fetched = client.get(path, headers=auth(keys["a"])).get_json()
    assert "secret" not in fetched
    listed = client.get("/v1/webhook_endpoints", headers=auth(keys["a"])).get_json()["data"]
    assert [e["id"] for e in listed] == [endpoint["id"]]
    assert all("secret" not in e for e in listed)
    patched = client.patch(
        path, json={"events": ["job.started", "job.canvas"], "enabled": False}, headers=auth(keys["a"])
    ).get_json()
    assert patched["events"] == ["job.started", "job.canvas"]
    assert (patched["status"], patched["disabled_reason"]) == ("disabled", "disabled by the user")
    assert client.patch(path, json={"enabled": True}, headers=auth(keys["a"])).get_json()["status"] == "enabled"
    rotated = client.post(f"{path}/rotate_secret", headers=auth(keys["a"])).get_json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]
    assert client.get(path, headers=auth(keys["b"])).status_code == 404  # another tenant
    assert client.delete(path, headers=auth(keys["a"])).status_code == 204
    assert client.get(path, headers=auth(keys["a"])).status_code == 404


def test_tenant_secret_is_shown_once_and_rotates(client, keys) -> None:
    first = client.get("/v1/webhook_secret", headers=auth(keys["a"])).get_json()
    assert first["secret"].startswith("whsec_")
    again = client.get("/v1/webhook_secret", headers=auth(keys["a"])).get_json()
    assert again["secret"] is None
    assert again["prefix"] == first["secret"][:10] + "…"
    rotated = client.post("/v1/webhook_secret/rotate", headers=auth(keys["a"])).get_json()
    assert rotated["secret"] != first["secret"]


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",
        "http://127.0.0.1/hook",
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://0x7f000001/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "ftp://8.8.8.8/hook",
        "http://user:pw@8.8.8.8/hook",
        "http://no-such-host.invalid/hook",
        # IPv6 forms that carry an inside IPv4 address, and IPv6 ranges that are not global
        "http://[64:ff9b::7f00:1]/hook",  # NAT64 of 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254 (cloud metadata)
        "http://[64:ff9b:1::a00:1]/hook",  # local-use NAT64
        "http://[2002:a00:1::1]/hook",  # 6to4 of 10.0.0.1
        "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
        "http://[::127.0.0.1]/hook",  # IPv4-compatible
        "http://[::a00:1]/hook",  # IPv4-compatible 10.0.0.1
        "http://[::]/hook",
        "http://[fec0::1]/hook",  # site-local
        "http://[fd00::1]/hook",  # unique local
        "http://[fe80::1]/hook",  # link-local
        "http://[2001::1]/hook",  # Teredo
        # not URLs at all: urlsplit itself refuses them (a 500 before)
        "http://\u2100/hook",  # a netloc that NFKC normalization changes
        "http://[::1/hook",  # an unclosed bracket
        "http://[zz]/hook",  # brackets around no IP address
    ],
)
def test_the_ssrf_guard_refuses_inside_addresses(settings, keys, url) -> None:
    client = create_app(settings.with_(webhook_allow="")).test_client()
    response = client.post("/v1/webhook_endpoints", json={"url": url}, headers=auth(keys["a"]))
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["param"] == "url"
    assert "not allowed" in error["message"]
    job = client.post("/v1/jobs", json={"model": TINY, "prompt": "x", "webhook": {"url": url}}, headers=auth(keys["a"]))
    assert job.status_code == 422
    assert job.get_json()["error"]["param"] == "webhook.url"


@pytest.mark.parametrize(
    "url",
    [
        "https://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]/hook",
        "https://[64:ff9b::808:808]/hook",  # NAT64 of a public address
        "https://[2002:808:808::1]/hook",  # 6to4 of a public address
    ],
)
def test_a_public_address_passes_the_guard(settings, keys, url) -> None:
    client = create_app(settings.with_(webhook_allow="")).test_client()
    response = client.post("/v1/webhook_endpoints", json={"url": url}, headers=auth(keys["a"]))
    assert response.status_code == 201, response.get_json()


def test_a_refusal_does_not_reveal_what_the_name_resolved_to(settings, keys) -> None:
    """`localhost` resolves (hosts file, real resolver) to loopback: the error names the host, not the
    address, as it would not for an internal name that resolves to a private address."""
    client = create_app(settings.with_(webhook_allow="")).test_client()
    response = client.post("/v1/webhook_endpoints", json={"url": "http://localhost:8080/hook"}, headers=auth(keys["a"]))
    assert response.status_code == 422
    message = response.get_json()["error"]["message"]
    assert "'localhost'" in message and "not public" in message
    assert "127.0.0.1" not in message and "::1" not in message


def test_a_slow_dns_answer_gives_a_422_within_the_look_up_deadline(settings, keys, monkeypatch) -> None:
    """The API thread stops waiting for the resolver after the deadline. A DNS server that hangs is outside
    our control, so `getaddrinfo` is slowed for one name; the rest (API, guard, thread pool) is real."""
    import socket
    import time

    from shared import ssrf

    real = socket.getaddrinfo

    def hanging(host, port, *args, **kwargs):
        if host == "slow-dns.example":
            time.sleep(6.0)
            host = "127.0.0.1"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(ssrf, "RESOLVE_TIMEOUT_SECONDS", 0.5)
    client = create_app(settings.with_(webhook_allow="")).test_client()
    started = time.monotonic()
    response = client.post(
        "/v1/webhook_endpoints", json={"url": "https://slow-dns.example/hook"}, headers=auth(keys["a"])
    )
    assert time.monotonic() - started < 3.5  # waiting for the resolver would take 6 s
    assert response.status_code == 422
    assert "did not resolve within 0.5 s" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "http://127.0.0.1/h", "events": ["job.done"]}, "events.0"),
        ({"url": "http://127.0.0.1/h", "events": []}, "events"),
        ({"url": "http://127.0.0.1/h", "secret": "mine"}, "secret"),
        ({"events": ["job.started"]}, "url"),
    ],
)
def test_bad_endpoint_bodies_are_422(client, keys, body, param) -> None:
    response = client.post("/v1/webhook_endpoints", json=body, headers=auth(keys["a"]))
    assert response.status_code == 422
    assert response.get_json()["error"]["param"] == param


def test_deleting_an_endpoint_is_retried_when_it_is_a_deadlocks_victim(client, keys, settings, backend) -> None:
    """The delete cascades to the endpoint's messages while another transaction (the webhook worker's, here
    a plain connection) holds one of them and waits for the endpoint: PostgreSQL aborts the delete, which
    used to answer 503; it is run again and succeeds."""
    if backend != "postgresql":
        pytest.skip("SQLite locks the whole database: no row-lock deadlock to break")
    created = client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook"}, headers=auth(keys["a"]))
    endpoint_id = created.get_json()["id"]
    with session_scope(settings.database_url) as session:
        for name in ("msg_deadlock_1", "msg_deadlock_2"):
            session.add(
                WebhookMessage(
                    id=name, tenant_id="t", endpoint_id=endpoint_id, url="http://127.0.0.1:9/hook",
                    event_type="job.succeeded", payload={},
                )
            )  # fmt: skip
    url = make_url(settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as other:
        other.execute("SET deadlock_timeout = '30s'")  # the API's backend (1 s) detects the deadlock first
        other.execute("UPDATE webhook_messages SET attempts = 1 WHERE id = 'msg_deadlock_2'")
        answers: list[int] = []
        deleting = threading.Thread(
            target=lambda: answers.append(
                client.delete(f"/v1/webhook_endpoints/{endpoint_id}", headers=auth(keys["a"])).status_code
            )
        )
        deleting.start()
        with psycopg.connect(url, autocommit=True) as watch:  # until the delete waits for msg_deadlock_2
            for _ in range(200):
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = "
                    "current_database()"
                ).fetchone()
                if waiting and waiting[0]:
                    break
                time.sleep(0.05)
        other.execute("SELECT 1 FROM webhook_endpoints WHERE id = %s FOR UPDATE", (endpoint_id,)).fetchall()
        other.commit()
        deleting.join(30)
    assert answers == [204]
    assert client.get(f"/v1/webhook_endpoints/{endpoint_id}", headers=auth(keys["a"])).status_code == 404
