"""CANVAS_METRICS_TOKEN: when set, the API's /metrics answers only a scrape that sends it as a bearer token
(401 in the one error shape otherwise); unset, /metrics asks for nothing."""

from __future__ import annotations

import pytest

from shared.settings import Settings

TOKEN = "0123456789abcdef" * 4


@pytest.fixture(params=["sqlite"], scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # the check does not touch the database


def client_with(settings: Settings, token: str):
    from api.app import create_app

    return create_app(settings.with_(metrics_token=token)).test_client()


def test_without_a_token_metrics_asks_for_none(settings: Settings) -> None:
    response = client_with(settings, "").get("/metrics")
    assert response.status_code == 200 and b"canvas_queue_depth" in response.data


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ", f"Bearer {TOKEN[:-1]}"],
    ids=["none", "wrong", "not-bearer", "longer", "empty", "prefix"],
)
def test_with_a_token_metrics_refuses_any_other(settings: Settings, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = client_with(settings, TOKEN).get("/metrics", headers=headers)
    assert response.status_code == 401
    assert "CANVAS_METRICS_TOKEN" in response.get_json()["error"]["message"]
    assert b"canvas_" not in response.data


def test_with_a_token_metrics_answers_the_scrape_that_sends_it(settings: Settings) -> None:
    client = client_with(settings, TOKEN)
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and b"canvas_queue_depth" in response.data
    assert client.get("/readyz").status_code == 200  # the probes and the rest are untouched


def test_the_token_may_come_from_a_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    monkeypatch.setenv("CANVAS_METRICS_TOKEN_FILE", str(tmp_path / "token"))
    settings = Settings.from_env()
    assert settings.metrics_token == TOKEN and TOKEN not in repr(settings)
