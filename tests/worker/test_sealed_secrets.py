"""Webhook secrets sealed at rest: the database holds only `sealed:v1:` values, the API shows the plain
secret once, deliveries are signed with it (checked by the `standardwebhooks` library, a receiver's view),
existing rows can be sealed and re-keyed, and a missing or bad key fails naming the setting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from standardwebhooks import Webhook

from shared import sealing
from shared.db import session_scope
from shared.models import WebhookEndpoint
from shared.webhooks import reseal_secrets
from tests.conftest import auth
from tests.e2e.receiver import Receiver
from tests.worker.test_webhook_delivery import message_for
from worker.webhooks import deliver


@pytest.fixture
def sealed(settings) -> Iterator[object]:
    """The settings with a fresh sealing key, configured in this process; plain storage again afterwards."""
    key = sealing.new_key()
    sealing.configure(key)
    yield settings.with_(webhook_sealing_keys=key)
    sealing.configure("")


def stored(settings, table: str = "webhook_endpoints") -> list[str]:
    """The secret column as the database holds it (raw SQL: no type processing)."""
    with session_scope(settings.database_url) as session:
        return [row[0] for row in session.execute(text(f"SELECT secret FROM {table}"))]


def test_the_database_holds_only_sealed_secrets_and_the_api_shows_the_plain_one(sealed, keys) -> None:
    from api.app import create_app

    client = create_app(sealed.with_(webhook_allow="127.0.0.1/32")).test_client()
    created = client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/h"}, headers=auth(keys["a"]))
    secret = created.get_json()["secret"]
    assert secret.startswith("whsec_")
    [raw] = stored(sealed)
    assert raw.startswith("sealed:v1:") and secret not in raw and secret.removeprefix("whsec_") not in raw
    tenant = client.get("/v1/webhook_secret", headers=auth(keys["a"])).get_json()["secret"]
    [raw_tenant] = stored(sealed, "tenant_webhook_secrets")
    assert tenant.startswith("whsec_") and raw_tenant.startswith("sealed:v1:")


def test_a_delivery_is_signed_with_the_plain_secret(sealed) -> None:
    receiver = Receiver()
    try:
        message_id, endpoint_id = message_for(sealed, receiver.script("/hook"))
        assert stored(sealed)[0].startswith("sealed:v1:")
        assert deliver(sealed, message_id) == "delivered"
        [got] = receiver.at("/hook")
        with session_scope(sealed.database_url) as session:
            secret = session.get(WebhookEndpoint, endpoint_id).secret
        assert Webhook(secret).verify(got.body, got.headers)["data"]["id"] == "job_w"  # raises if unsigned
    finally:
        receiver.close()


def test_existing_plain_rows_are_sealed_then_moved_to_a_new_key(settings) -> None:
    message_for(settings, "http://127.0.0.1:9/h")  # stored plain: no keys yet
    [plain] = stored(settings)
    assert plain.startswith("whsec_")
    old, new = sealing.new_key(), sealing.new_key()
    try:
        sealing.configure(old)
        with session_scope(settings.database_url) as session:
            assert reseal_secrets(session) == 1
        [sealed_old] = stored(settings)
        assert sealed_old.startswith("sealed:v1:")
        sealing.configure(f"{new},{old}")  # rotation: the new key seals, the old one still opens
        with session_scope(settings.database_url) as session:
            reseal_secrets(session)
        sealing.configure(new)  # the old key is gone: what it sealed is rewritten, so it still opens
        with session_scope(settings.database_url) as session:
            assert session.get(WebhookEndpoint, "we_1").secret == plain
        sealing.configure("")  # a sealed row without its key fails, naming the setting
        failing = pytest.raises(sealing.SealingError, match="CANVAS_WEBHOOK_SEALING_KEYS")
        with failing, session_scope(settings.database_url) as session:
            session.get(WebhookEndpoint, "we_1").secret  # noqa: B018
    finally:
        sealing.configure("")


def test_a_malformed_key_stops_the_api_at_start_naming_the_setting(settings) -> None:
    from api.app import create_app

    for bad in ("not base64!", "c2hvcnQ="):
        with pytest.raises(sealing.SealingError, match="CANVAS_WEBHOOK_SEALING_KEYS"):
            create_app(settings.with_(webhook_sealing_keys=bad))
    sealing.configure("")
