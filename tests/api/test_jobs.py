"""Submitting, reading, listing and canceling jobs through the API (no worker: jobs stay queued)."""

from __future__ import annotations

from tests.conftest import TINY, auth


def submit(client, key: str, **body):
    return client.post("/v1/jobs", json={"kind": "generate", "model": TINY, **body}, headers=auth(key))


def test_submit_returns_202_with_the_job_and_location(client, keys) -> None:
    response = submit(client, keys["a"], prompt="Hello", params={"max_new_tokens": 20})
    assert response.status_code == 202
    job = response.get_json()
    assert job["status"] == "queued"
    assert job["kind"] == "generate"
    assert job["model"] == TINY
    assert job["id"].startswith("job_")
    assert job["created_at"].endswith("Z")
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    # defaults filled in, a seed drawn and recorded
    assert job["params"]["max_new_tokens"] == 20
    assert job["params"]["max_denoising_steps"] == 48
    assert job["params"]["entropy_bound"] == 0.1
    assert (job["params"]["t_min"], job["params"]["t_max"]) == (0.4, 0.8)
    assert isinstance(job["params"]["seed"], int)
    assert job["timeline"][0]["status"] == "queued"
    fetched = client.get(response.headers["Location"], headers=auth(keys["a"])).get_json()
    assert fetched["id"] == job["id"]
    assert fetched["params"] == job["params"]


def test_messages_are_rendered_with_the_chat_template(client, keys, settings) -> None:
    from shared.db import session_scope
    from shared.models import Job

    messages = [{"role": "user", "content": "hi"}]
    job = submit(client, keys["a"], messages=messages).get_json()
    assert job["input"] == {"messages": messages}
    with session_scope(settings.database_url) as session:
        ids = session.get(Job, job["id"]).input_ids
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_tiny_path(settings))
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids == list(expected["input_ids"])


def _tiny_path(settings) -> str:
    from shared.db import session_scope
    from shared.models import ModelRecord

    with session_scope(settings.database_url) as session:
        return session.get(ModelRecord, TINY).path


def test_prompt_is_tokenized_like_the_model_tokenizer(client, keys, settings) -> None:
    from transformers import AutoTokenizer

    from shared.db import session_scope
    from shared.models import Job

    job = submit(client, keys["a"], prompt="héllo, wörld").get_json()
    with session_scope(settings.database_url) as session:
        ids = session.get(Job, job["id"]).input_ids
    assert ids == AutoTokenizer.from_pretrained(_tiny_path(settings))("héllo, wörld").input_ids


def test_another_tenants_job_is_404(client, keys) -> None:
    job = submit(client, keys["a"], prompt="mine").get_json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["b"])).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(keys["b"])).status_code == 404
    assert client.get("/v1/jobs", headers=auth(keys["b"])).get_json()["data"] == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["a"])).status_code == 200


def test_list_is_newest_first_with_cursor_pagination_and_filters(client, keys) -> None:
    ids = [submit(client, keys["a"], prompt=f"p{i}").get_json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        url = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=auth(keys["a"])).get_json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(ids))
    assert len(client.get("/v1/jobs?status=queued", headers=auth(keys["a"])).get_json()["data"]) == 5
    assert client.get("/v1/jobs?status=running", headers=auth(keys["a"])).get_json()["data"] == []
    assert client.get("/v1/jobs?model=other", headers=auth(keys["a"])).get_json()["data"] == []
    assert len(client.get(f"/v1/jobs?model={TINY}&kind=generate", headers=auth(keys["a"])).get_json()["data"]) == 5


def test_cancel_a_queued_job_at_once_and_refuse_a_second_time(client, keys) -> None:
    job = submit(client, keys["a"], prompt="stop me").get_json()
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(keys["a"]))
    assert response.status_code == 200
    canceled = response.get_json()
    assert canceled["status"] == "canceled"
    assert canceled["output"]["finish_reason"] == "canceled"
    assert canceled["finished_at"] is not None
    assert [e["status"] for e in canceled["timeline"]] == ["queued", "canceled"]
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(keys["a"]))
    assert again.status_code == 409
    assert "canceled" in again.get_json()["error"]["message"]


def test_idempotency_key_returns_the_same_job(client, keys) -> None:
    headers = {**auth(keys["a"]), "Idempotency-Key": "order-42"}
    body = {"model": TINY, "prompt": "once"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    second = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202
    assert second.status_code == 200
    assert first.get_json()["id"] == second.get_json()["id"]
    assert len(client.get("/v1/jobs", headers=auth(keys["a"])).get_json()["data"]) == 1
    other = client.post("/v1/jobs", json={**body, "prompt": "twice"}, headers=headers)
    assert other.status_code == 422
    assert other.get_json()["error"]["param"] == "Idempotency-Key"
    # another tenant may use the same key for its own job
    theirs = client.post("/v1/jobs", json=body, headers={**auth(keys["b"]), "Idempotency-Key": "order-42"})
    assert theirs.status_code == 202
    assert theirs.get_json()["id"] != first.get_json()["id"]


def test_models_are_listed(client, keys) -> None:
    body = client.get("/v1/models", headers=auth(keys["a"])).get_json()
    tiny = next(m for m in body["data"] if m["id"] == TINY)
    assert tiny["canvas_length"] == 32
    assert tiny["max_positions"] == 1024
    assert client.get(f"/v1/models/{TINY}", headers=auth(keys["a"])).status_code == 200
    assert client.get("/v1/models/nope", headers=auth(keys["a"])).status_code == 404


def test_healthz_needs_no_key_and_reports_dependencies(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"database": "ok", "redis": "ok"}


def test_healthz_is_503_when_redis_is_down(settings) -> None:
    from api.app import create_app
    from shared.local_redis import free_port

    app = create_app(settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "error"  # no error text for unauthenticated callers: it is logged


def test_healthz_does_not_show_dependency_errors(settings, caplog) -> None:
    from api.app import create_app
    from tests.conftest import PG_ADMIN_URL

    server = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    hidden = f"{server}/secret_database_name"  # PostgreSQL's error names the database
    response = create_app(settings.with_(database_url=hidden)).test_client().get("/healthz")
    assert response.status_code == 503 and response.get_json()["checks"]["database"] == "error"
    assert "secret_database_name" not in response.get_data(as_text=True)
    assert "secret_database_name" in caplog.text  # the operator still sees why


def test_the_openapi_document_describes_the_job_request(client) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(doc["paths"])
    params = doc["components"]["schemas"]["GenerationParams"]["properties"]
    assert {"max_new_tokens", "max_denoising_steps", "entropy_bound", "t_min", "t_max", "seed"} <= set(params)
    assert doc["components"]["schemas"]["JobCreate"]["additionalProperties"] is False


def test_a_database_outage_is_503_with_retry_after(settings, keys, tmp_path) -> None:
    from api.app import create_app

    app = create_app(settings.with_(database_url=f"sqlite:///{tmp_path}/missing/dir/canvas.db"))
    response = app.test_client().get("/v1/jobs", headers=auth(keys["a"]))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["type"] == "service_unavailable"


def test_a_deadline_is_recorded_and_checked(client, keys) -> None:
    from datetime import datetime

    job = submit(client, keys["a"], prompt="hi", deadline_seconds=90).get_json()
    created, deadline = (datetime.fromisoformat(job[k].replace("Z", "+00:00")) for k in ("created_at", "deadline_at"))
    assert 89 <= (deadline - created).total_seconds() <= 91
    assert submit(client, keys["a"], prompt="hi").get_json()["deadline_at"] is None
    for bad in (0, 8 * 24 * 3600, "60"):
        response = submit(client, keys["a"], prompt="hi", deadline_seconds=bad)
        assert response.status_code == 422 and response.get_json()["error"]["param"] == "deadline_seconds"
