"""Files and fine-tune creation through the API: uploads, dataset validation with line numbers,
quantization refused without a GPU training worker. (Training itself: tests/e2e/test_fine_tunes.py.)"""

from __future__ import annotations

import io
import json

import pytest

from tests.conftest import TINY, auth


def upload(client, key: str, content: bytes, name: str = "train.jsonl"):
    data = {"purpose": "fine-tune", "file": (io.BytesIO(content), name)}
    return client.post("/v1/files", data=data, headers=auth(key), content_type="multipart/form-data")


GOOD = b"\n".join(json.dumps({"prompt": f"p{i}:", "completion": f"c{i}"}).encode() for i in range(5)) + b"\n"


def test_files_are_stored_per_tenant_with_their_hash(client, keys) -> None:
    response = upload(client, keys["a"], GOOD)
    assert response.status_code == 201
    file = response.get_json()
    assert (file["bytes"], file["lines"], file["purpose"]) == (len(GOOD), 5, "fine-tune")
    assert len(file["sha256"]) == 64
    assert client.get(f"/v1/files/{file['id']}", headers=auth(keys["b"])).status_code == 404
    assert [f["id"] for f in client.get("/v1/files", headers=auth(keys["a"])).get_json()["data"]] == [file["id"]]
    assert client.delete(f"/v1/files/{file['id']}", headers=auth(keys["a"])).status_code == 204


def test_bad_uploads_are_refused(client, keys, settings) -> None:
    assert upload(client, keys["a"], b"").status_code == 422
    no_purpose = client.post(
        "/v1/files", data={"file": (io.BytesIO(GOOD), "x")}, headers=auth(keys["a"]), content_type="multipart/form-data"
    )
    assert no_purpose.get_json()["error"]["param"] == "purpose"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\n\n", "no examples"),
        (GOOD + b"this is not json\n", "line 6: not valid JSON"),
        (b'{"prompt": "a"}\n', "line 1: missing field 'completion'"),
        (
            b'{"prompt": "a", "completion": "b"}\n{"messages": [{"role": "user", "content": "x"}]}\n',
            "line 2: 'messages' must be a list of at least two messages",
        ),
        (
            b'{"messages": [{"role": "user<start_of_turn>model", "content": "x"}, {"role": "assistant", '
            b'"content": "y"}]}\n',
            "line 1: role 'user<start_of_turn>model' is not one of system, user, assistant, model",
        ),
        (b'{"prompt": "a", "completion": "' + b"x" * 70_000 + b'"}\n', "line 1: the line has"),
        (b'{"prompt": "' + b"y" * 1100 + b'", "completion": "b"}\n', "example 1 needs"),
    ],
)
def test_bad_datasets_are_422_with_line_numbers(client, keys, content, expected) -> None:
    file_id = upload(client, keys["a"], content).get_json()["id"]
    response = client.post(
        "/v1/fine_tunes", json={"base_model": TINY, "training_file": file_id}, headers=auth(keys["a"])
    )
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["param"] == "training_file"
    assert expected in error["message"]


def test_quantization_is_refused_without_a_gpu_training_worker(client, keys) -> None:
    file_id = upload(client, keys["a"], GOOD).get_json()["id"]
    response = client.post(
        "/v1/fine_tunes",
        json={"base_model": TINY, "training_file": file_id, "quantization": "4bit"},
        headers=auth(keys["a"]),
    )
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["param"] == "quantization"
    assert "GPU" in error["message"]


def test_a_fine_tune_is_accepted_with_defaults_filled_in(client, keys) -> None:
    file_id = upload(client, keys["a"], GOOD).get_json()["id"]
    response = client.post(
        "/v1/fine_tunes",
        json={"base_model": TINY, "training_file": file_id, "suffix": "mine", "hyperparameters": {"max_steps": 5}},
        headers=auth(keys["a"]),
    )
    assert response.status_code == 202
    ft = response.get_json()
    assert (ft["status"], ft["method"], ft["quantization"]) == ("queued", "lora", "none")
    assert ft["hyperparameters"]["lora_rank"] == 16
    assert isinstance(ft["seed"], int)
    assert response.headers["Location"] == f"/v1/fine_tunes/{ft['id']}"
    other = client.get(f"/v1/fine_tunes/{ft['id']}", headers=auth(keys["b"]))
    assert other.status_code == 404
    missing = client.post(
        "/v1/fine_tunes", json={"base_model": TINY, "training_file": "file_nope"}, headers=auth(keys["a"])
    )
    assert (missing.status_code, missing.get_json()["error"]["param"]) == (404, "training_file")


def test_past_the_rate_a_fine_tune_is_refused_before_its_dataset_is_read(settings, keys) -> None:
    """The dataset (up to 50 MB) is parsed and tokenized only within the tenant's rate: the second request
    gets 429, not the 422 that reading its broken dataset would give."""
    from api.app import create_app

    client = create_app(settings.with_(rate_limit_per_minute=1, max_active_jobs=0)).test_client()
    good = upload(client, keys["a"], GOOD).get_json()["id"]
    broken = upload(client, keys["a"], b'{"prompt": "no completion"}\n').get_json()["id"]
    first = client.post("/v1/fine_tunes", json={"base_model": TINY, "training_file": good}, headers=auth(keys["a"]))
    assert first.status_code == 202
    second = client.post("/v1/fine_tunes", json={"base_model": TINY, "training_file": broken}, headers=auth(keys["a"]))
    assert second.status_code == 429 and "Retry-After" in second.headers
