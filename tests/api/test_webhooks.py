"""Webhook endpoints, secrets and the SSRF guard through the API (no delivery here: see tests/e2e)."""

from __future__ import annotations

import pytest

from api.app import create_app
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


def test_a_public_address_passes_the_guard(settings, keys) -> None:
    client = create_app(settings.with_(webhook_allow="")).test_client()
    response = client.post("/v1/webhook_endpoints", json={"url": "https://8.8.8.8/hook"}, headers=auth(keys["a"]))
    assert response.status_code == 201


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
