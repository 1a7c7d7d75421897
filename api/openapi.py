"""GET /v1/openapi.json: the OpenAPI 3.1 document of the API, with request schemas from the pydantic models."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, jsonify

from api.completion_schemas import ChatCompletionCreate, CompletionCreate
from api.schemas import JobCreate

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
ERROR = {"$ref": "#/components/responses/Error"}
STATUSES = ["queued", "running", "canceling", "succeeded", "failed", "canceled", "expired"]

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "kind", "model", "status", "params", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "job"},
        "kind": {"type": "string"},
        "model": {"type": "string"},
        "status": {"enum": STATUSES},
        "input": {"type": "object"},
        "params": {"$ref": "#/components/schemas/GenerationParams"},
        "output": {
            "type": ["object", "null"],
            "properties": {
                "text": {"type": "string"},
                "token_ids": {"type": "array", "items": {"type": "integer"}},
                "finish_reason": {"enum": ["eos", "length", "stop", "canceled"]},
            },
        },
        "stats": {"type": ["object", "null"]},
        "error": {"type": ["object", "null"]},
        "attempts": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "deadline_at": {"type": ["string", "null"], "format": "date-time"},
        "timeline": {"type": "array", "items": {"type": "object"}},
    },
}


def _op(summary: str, ok: str, ok_schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    responses = {ok: {"description": summary, "content": {"application/json": {"schema": ok_schema}}}}
    responses.update({code: ERROR for code in ("400", "401", "404", "409", "413", "422", "429")})
    return {"summary": summary, "responses": responses, **extra}


def _openai_op(summary: str, schema: str) -> dict[str, Any]:
    """OpenAI's response shapes (JSON, or chunks as server-sent events with `stream`)."""
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(model=schema)}}}}
    op = _op(summary, "200", {"type": "object"}, requestBody=body)
    op["responses"]["200"]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    op["responses"].update({"500": ERROR, "503": ERROR, "504": ERROR})
    return op


@lru_cache(maxsize=1)
def build_document() -> dict[str, Any]:
    schema = JobCreate.model_json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    openai = {}
    for model in (CompletionCreate, ChatCompletionCreate):
        openai[model.__name__] = model.model_json_schema(ref_template=REF)
        defs.update(openai[model.__name__].pop("$defs", {}))
    job = {"$ref": "#/components/schemas/Job"}
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(model="JobCreate")}}}}
    idempotency = [{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}]
    job_list = {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": job},
            "has_more": {"type": "boolean"},
            "next_cursor": {"type": ["string", "null"]},
        },
    }
    list_params = [
        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
        for n in ("status", "model", "kind", "limit", "cursor")
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Canvas", "version": "1", "description": "Jobs for block-diffusion language models."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": _op("Submit a job", "202", job, requestBody=body, parameters=idempotency),
                "get": _op("List jobs, newest first", "200", job_list, parameters=list_params),
            },
            "/v1/jobs/{job_id}": {"get": _op("Get a job", "200", job, parameters=job_id)},
            "/v1/jobs/{job_id}/cancel": {"post": _op("Cancel a job", "200", job, parameters=job_id)},
            "/v1/models": {"get": _op("List models", "200", {"type": "object"})},
            "/v1/completions": {
                "post": _openai_op("A text completion (OpenAI-compatible; a generate job)", "CompletionCreate")
            },
            "/v1/chat/completions": {
                "post": _openai_op("A chat completion (OpenAI-compatible; a generate job)", "ChatCompletionCreate")
            },
            "/healthz": {
                "get": {
                    "summary": "Database and Redis health",
                    "security": [],
                    "responses": {"200": {"description": "healthy"}, "503": {"description": "degraded"}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**defs, "JobCreate": schema, "Job": JOB_SCHEMA, **openai},
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "error": {
                                        "type": "object",
                                        "properties": {
                                            "type": {"type": "string"},
                                            "message": {"type": "string"},
                                            "param": {"type": ["string", "null"]},
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        },
    }


@bp.get("/v1/openapi.json")
def openapi_document() -> Response:
    return jsonify(build_document())
