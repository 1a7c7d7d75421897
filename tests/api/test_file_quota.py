"""A tenant's files are held to a storage quota: past it an upload gets a 413 that says how much is held,
and deleting files makes room again. Other tenants are not affected."""

from __future__ import annotations

import io

from api.app import create_app
from tests.conftest import auth

LINE = b'{"prompt": "p:", "completion": "c"}\n'


def upload(client, key: str, content: bytes):
    data = {"purpose": "fine-tune", "file": (io.BytesIO(content), "train.jsonl")}
    return client.post("/v1/files", data=data, headers=auth(key), content_type="multipart/form-data")


def test_uploads_past_the_tenants_quota_are_refused_until_files_are_deleted(settings, keys) -> None:
    client = create_app(settings.with_(file_quota_bytes=10 * len(LINE))).test_client()
    first = upload(client, keys["a"], LINE * 6)
    assert first.status_code == 201
    refused = upload(client, keys["a"], LINE * 5)
    assert refused.status_code == 413
    error = refused.get_json()["error"]
    assert error["type"] == "quota_exceeded_error" and error["param"] == "file"
    assert f"holds {6 * len(LINE)} of {10 * len(LINE)} bytes" in error["message"]
    assert upload(client, keys["a"], LINE * 4).status_code == 201  # exactly fills it
    assert upload(client, keys["b"], LINE * 10).status_code == 201  # another tenant's quota is its own
    assert client.delete(f"/v1/files/{first.get_json()['id']}", headers=auth(keys["a"])).status_code == 204
    assert upload(client, keys["a"], LINE * 5).status_code == 201
