"""The OpenAPI document describes every public route, with schemas that are valid JSON Schema."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from api.openapi import openapi_path, operation_of, public_rules


@pytest.fixture(params=["sqlite"], scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # the document does not depend on the database


def test_every_public_route_is_described(app, client) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    missing = []
    for rule in public_rules(app):
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            if operation_of(app, rule) is None or method.lower() not in doc["paths"].get(openapi_path(rule), {}):
                missing.append(f"{method} {rule.rule}")
    assert not missing, f"routes missing from /v1/openapi.json (decorate them with api.openapi.describe): {missing}"
    assert len([op for item in doc["paths"].values() for op in item.values()]) >= 30
    for prefix in ("/v1/webhook_endpoints", "/v1/files", "/v1/fine_tunes", "/v1/chat/completions", "/healthz"):
        assert any(path.startswith(prefix) for path in doc["paths"]), prefix
    assert not any(path.startswith(("/admin", "/metrics")) for path in doc["paths"])


def test_the_schemas_are_valid_and_come_from_the_models(client) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    assert schemas["Job"]["additionalProperties"] is False  # a response field added to a view must be added here
    submit = doc["paths"]["/v1/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobCreate"}
    assert submit["responses"]["202"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}
    assert {p["name"] for p in submit["parameters"]} == {"Idempotency-Key"}
    upload = doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert schemas["FileUpload"]["properties"]["file"]["format"] == "binary" and "multipart/form-data" in upload
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    listing = {p["name"]: p for p in doc["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert listing["limit"]["schema"]["anyOf"][0]["maximum"] == 100
    refs = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    assert len(refs) == sum(len(item) for item in doc["paths"].values())  # operation ids are unique


def test_links_carry_ids_from_one_operation_to_the_next(client) -> None:
    paths = client.get("/v1/openapi.json").get_json()["paths"]
    created = paths["/v1/jobs"]["post"]["responses"]["202"]["links"]
    assert created["GET /v1/jobs/{job_id}"] == {
        "operationId": paths["/v1/jobs/{job_id}"]["get"]["operationId"],
        "parameters": {"job_id": "$response.body#/id"},
    }
    listed = paths["/v1/webhook_endpoints/{endpoint_id}/deliveries"]["get"]["responses"]["200"]["links"]
    replay = listed["POST /v1/webhook_endpoints/{endpoint_id}/deliveries/{message_id}/replay"]["parameters"]
    assert replay == {"message_id": "$response.body#/data/0/id", "endpoint_id": "$request.path.endpoint_id"}
    uploaded = paths["/v1/files"]["post"]["responses"]["201"]["links"]
    assert uploaded["POST /v1/fine_tunes training_file"]["requestBody"] == {"training_file": "$response.body#/id"}
    assert "links" not in paths["/v1/jobs"]["get"]["responses"]["400"]
