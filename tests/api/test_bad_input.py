"""Every bad input gets the one JSON error shape, the right status, and names what is wrong."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, auth


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message", "param"}, body
    return body["error"]


def submit(client, key: str, body: object, **kw):
    return client.post("/v1/jobs", data=json.dumps(body), headers=auth(key), content_type="application/json", **kw)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_new_tokens": 0}, "params.max_new_tokens"),
        ({"max_new_tokens": "12"}, "params.max_new_tokens"),
        ({"max_new_tokens": 1.5}, "params.max_new_tokens"),
        ({"max_denoising_steps": -1}, "params.max_denoising_steps"),
        ({"entropy_bound": 0}, "params.entropy_bound"),
        ({"entropy_bound": "x"}, "params.entropy_bound"),
        ({"t_min": 0.9, "t_max": 0.5}, "params.t_max"),
        ({"stability_threshold": True}, "params.stability_threshold"),
        ({"confidence_threshold": -0.1}, "params.confidence_threshold"),
        ({"confidence_threshold": 0}, "params.confidence_threshold"),
        ({"seed": -5}, "params.seed"),
        ({"temperature": 0.7}, "params.temperature"),
    ],
)
def test_bad_params_are_422_naming_the_field(client, keys, params, param) -> None:
    response = submit(client, keys["a"], {"kind": "generate", "model": TINY, "prompt": "hi", "params": params})
    assert response.status_code == 422
    error = error_of(response)
    assert error["param"] == param
    assert param.split(".")[-1] in error["message"]


def test_unknown_top_level_field_is_refused(client, keys) -> None:
    response = submit(client, keys["a"], {"model": TINY, "prompt": "hi", "do_sample": True})
    assert response.status_code == 422
    assert error_of(response)["param"] == "do_sample"
    assert "unknown field" in error_of(response)["message"]


def test_unknown_kind_is_refused(client, keys) -> None:
    response = submit(client, keys["a"], {"kind": "paint", "model": TINY, "prompt": "hi"})
    assert response.status_code == 422
    assert error_of(response)["param"] == "kind"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
def test_malformed_body_is_400(client, keys, raw) -> None:
    response = client.post("/v1/jobs", data=raw, headers=auth(keys["a"]), content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_json_error"


def test_oversized_body_is_413(client, keys, settings) -> None:
    body = {"model": TINY, "prompt": "x" * (settings.max_body_bytes + 10)}
    response = submit(client, keys["a"], body)
    assert response.status_code == 413
    assert "limit" in error_of(response)["message"]


def test_prompt_longer_than_the_model_allows_is_422(client, keys) -> None:
    # The tiny model has 1024 positions and 32-token canvases; 1000 byte-tokens + one canvas do not fit.
    response = submit(client, keys["a"], {"model": TINY, "prompt": "y" * 1000, "params": {"max_new_tokens": 8}})
    assert response.status_code == 422
    error = error_of(response)
    assert error["param"] == "prompt"
    assert "1024" in error["message"]


def test_max_new_tokens_past_the_context_is_422(client, keys) -> None:
    response = submit(client, keys["a"], {"model": TINY, "prompt": "hi", "params": {"max_new_tokens": 5000}})
    assert response.status_code == 422
    assert "positions" in error_of(response)["message"]


def test_a_job_longer_than_an_engine_row_holds_is_422_naming_the_setting(settings, keys) -> None:
    # The tiny model has 1024 positions, but the service's engines preallocate 256 per row: a prompt and
    # canvases needing 288 would be accepted and then refused by the worker; the API refuses it first.
    from api.app import create_app

    client = create_app(settings.model_copy(update={"engine_max_context": 256})).test_client()
    response = submit(client, keys["a"], {"model": TINY, "prompt": "y" * 250, "params": {"max_new_tokens": 8}})
    assert response.status_code == 422
    error = error_of(response)
    assert error["param"] == "prompt"
    assert "CANVAS_ENGINE_MAX_CONTEXT" in error["message"] and "256" in error["message"]
    fits = submit(client, keys["a"], {"model": TINY, "prompt": "y" * 200, "params": {"max_new_tokens": 8}})
    assert fits.status_code == 202


def test_unknown_model_is_404_naming_it(client, keys) -> None:
    response = submit(client, keys["a"], {"model": "no-such-model", "prompt": "hi"})
    assert response.status_code == 404
    error = error_of(response)
    assert error["param"] == "model"
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": TINY}, "prompt"),
        ({"model": TINY, "prompt": "a", "input_ids": [2, 3]}, "prompt"),
        ({"model": TINY, "input_ids": [2, 99999]}, "input_ids"),
        ({"model": TINY, "input_ids": []}, "input_ids"),
        ({"model": TINY, "input_ids": ["a"]}, "input_ids.0"),
        ({"model": TINY, "messages": [{"role": "user"}]}, "messages.0.content"),
        ({"model": TINY, "prompt": ""}, "prompt"),
        ({"model": 7, "prompt": "a"}, "model"),
    ],
)
def test_bad_inputs_are_422(client, keys, body, param) -> None:
    response = submit(client, keys["a"], body)
    assert response.status_code == 422, response.get_json()
    assert error_of(response)["param"] == param


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer cvs_not-a-key"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
)
def test_missing_or_wrong_key_is_401(client, headers) -> None:
    response = client.post("/v1/jobs", json={"model": TINY, "prompt": "hi"}, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
    assert client.get("/v1/jobs", headers=headers).status_code == 401
    assert client.get("/v1/models", headers=headers).status_code == 401


def test_revoked_key_is_401(client, keys, settings) -> None:
    from shared.db import session_scope
    from shared.keys import authenticate, revoke_key

    with session_scope(settings.database_url) as session:
        principal = authenticate(session, keys["a"])
        assert principal is not None
        assert revoke_key(session, principal.key_id)
    assert client.get("/v1/jobs", headers=auth(keys["a"])).status_code == 401


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=%%%", "cursor"),
        ("foo=1", "foo"),
    ],
)
def test_bad_list_queries_are_422(client, keys, query, param) -> None:
    response = client.get(f"/v1/jobs?{query}", headers=auth(keys["a"]))
    assert response.status_code == 422
    assert error_of(response)["param"] == param


def test_unknown_route_uses_the_error_shape(client, keys) -> None:
    response = client.get("/v1/nothing", headers=auth(keys["a"]))
    assert response.status_code == 404
    error_of(response)


@pytest.mark.parametrize("stop", ["###", [""], ["a" * 65], ["a", "b", "c", "d", "e"], [1]])
def test_bad_stop_sequences_are_422(client, keys, stop) -> None:
    response = submit(client, keys["a"], {"model": TINY, "prompt": "hi", "params": {"stop": stop}})
    assert response.status_code == 422
    assert error_of(response)["param"].startswith("params.stop")


def test_an_integer_past_pythons_digit_limit_is_400(client, keys) -> None:
    raw = '{"model": "tiny", "prompt": "hi", "params": {"seed": ' + "9" * 5000 + "}}"
    response = client.post("/v1/jobs", data=raw, headers=auth(keys["a"]), content_type="application/json")
    assert response.status_code == 400
    assert "digits" in error_of(response)["message"]


def test_json_nested_past_the_recursion_limit_is_400(client, keys) -> None:
    raw = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/v1/jobs", data=raw, headers=auth(keys["a"]), content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)


def test_a_nul_character_is_400_naming_where_on_both_databases(client, keys) -> None:
    response = submit(client, keys["a"], {"model": "tiny", "prompt": "a\x00b"})
    assert response.status_code == 400
    assert error_of(response)["param"] == "prompt"
    response = submit(client, keys["a"], {"model": "t\x00iny", "prompt": "x"})
    assert response.status_code == 400 and error_of(response)["param"] == "model"
    # In a path: PostgreSQL refuses the value; that is the client's error, not the server's.
    response = client.get("/v1/jobs/job_%00x", headers=auth(keys["a"]))
    assert response.status_code in (400, 404), response.get_data(as_text=True)
    error_of(response)


def test_a_forged_cursor_with_a_naive_datetime_is_422(client, keys) -> None:
    import base64

    for payload in (["2026-01-01T00:00:00", "job_x"], ["2026-01-01T00:00:00+00:00", 7], [1, 2]):
        cursor = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        response = client.get(f"/v1/jobs?cursor={cursor}", headers=auth(keys["a"]))
        assert response.status_code == 422, (payload, response.get_data(as_text=True))
        assert error_of(response)["param"] == "cursor"


@pytest.mark.parametrize("limit", ["\u00b2", "\u0661\u0660", "1e3"])  # superscript two, Arabic-Indic ten
def test_a_limit_of_non_ascii_digits_is_422(client, keys, limit) -> None:
    response = client.get(f"/v1/jobs?limit={limit}", headers=auth(keys["a"]))
    assert response.status_code == 422 and error_of(response)["param"] == "limit"


@pytest.mark.parametrize(("key", "why"), [("", "empty"), ("   ", "empty"), ("k" * 201, "201 characters")])
def test_a_bad_idempotency_key_is_400_naming_the_header(client, keys, key, why) -> None:
    body = {"model": TINY, "prompt": "hello"}
    response = client.post("/v1/jobs", json=body, headers={**auth(keys["a"]), "Idempotency-Key": key})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "Idempotency-Key" and why in error["message"]
    # Nothing was recorded, and later requests (with or without a key) are unaffected.
    assert submit(client, keys["a"], body).status_code == 202
    ok = client.post("/v1/jobs", json=body, headers={**auth(keys["a"]), "Idempotency-Key": "k" * 200})
    assert ok.status_code == 202


def test_concurrent_submissions_with_one_idempotency_key_make_one_job(app, keys) -> None:
    """One request wins the insert; the others replay its job (before: 500s from the unique index)."""
    from concurrent.futures import ThreadPoolExecutor

    headers = {**auth(keys["a"]), "Idempotency-Key": "same-key"}
    body = json.dumps({"model": TINY, "prompt": "hello"})

    def post(_: int):
        return app.test_client().post("/v1/jobs", data=body, headers=headers, content_type="application/json")

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[-1] < 500, [r.get_data(as_text=True) for r in responses if r.status_code >= 500]
    assert statuses.count(202) == 1 and statuses.count(200) == 7, statuses
    assert len({r.get_json()["id"] for r in responses}) == 1


@pytest.mark.parametrize("last_event_id", ["abc", "1-2-3", "-1", "9" * 30])
def test_a_malformed_last_event_id_is_400_naming_the_header(client, keys, last_event_id) -> None:
    job = submit(client, keys["a"], {"model": TINY, "prompt": "hi"}).get_json()["id"]
    response = client.get(f"/v1/jobs/{job}/events", headers={**auth(keys["a"]), "Last-Event-ID": last_event_id})
    assert response.status_code == 400 and error_of(response)["param"] == "Last-Event-ID"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", '{"model": "tiny", "prompt": "a\\ud800b"}'),
        ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}'),
        ("/v1/completions", '{"model": "tiny", "prompt": "x", "user": "\\ud83d"}'),
    ],
)
def test_a_lone_surrogate_escape_is_a_400_naming_the_field(client, keys, path, body) -> None:
    """JSON may escape half of a UTF-16 pair; no UTF-8 text (tokenizer, database) can hold it. It was a 500."""
    response = client.post(path, data=body, headers={**auth(keys["a"]), "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.get_json()["error"]
    assert "surrogate" in error["message"] and error["param"] in ("prompt", "messages.0.content", "user")
