"""/readyz (the database answers; Redis is not needed) and /livez (the process answers), the probes of
compose and Kubernetes: no key, the shapes the OpenAPI document gives, and no dependency's error text."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from shared.local_redis import free_port
from shared.settings import Settings


@pytest.fixture(params=["sqlite"], scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # SELECT 1 is the same on both


def body_of(client, path: str, status: int) -> dict:
    """The response's JSON, checked against the schema the OpenAPI document gives for `status`."""
    response = client.get(path)
    assert response.status_code == status, response.get_data(as_text=True)
    doc = client.get("/v1/openapi.json").get_json()
    ref = doc["paths"][path]["get"]["responses"][str(status)]["content"]["application/json"]["schema"]["$ref"]
    schema = {**doc["components"]["schemas"][ref.rsplit("/", 1)[1]], "$defs": doc["components"]["schemas"]}
    Draft202012Validator(schema).validate(response.get_json())
    return response.get_json()


def app_with(settings: Settings, **changes: object):
    from api.app import create_app

    return create_app(settings.with_(**changes)).test_client()


def test_ready_and_alive_need_no_key(client) -> None:
    assert body_of(client, "/readyz", 200) == {"status": "ok", "checks": {"database": "ok"}}
    assert body_of(client, "/livez", 200) == {"status": "ok"}


def test_redis_down_leaves_the_api_ready(settings: Settings) -> None:
    """Jobs accepted meanwhile wait in the outbox: a Redis blip must not take the API out of service."""
    client = app_with(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert client.get("/healthz").status_code == 503  # /healthz still reports it
    assert body_of(client, "/readyz", 200) == {"status": "ok", "checks": {"database": "ok"}}


def test_database_down_makes_the_api_unready_but_alive(settings: Settings, caplog) -> None:
    port = free_port()
    client = app_with(settings, database_url=f"postgresql+psycopg://canvas:s3cret@127.0.0.1:{port}/canvas")
    assert body_of(client, "/readyz", 503) == {"status": "unavailable", "checks": {"database": "error"}}
    assert str(port) in caplog.text  # the reason is logged, not shown to the caller
    assert body_of(client, "/livez", 200) == {"status": "ok"}
