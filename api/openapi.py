"""GET /v1/openapi.json: the OpenAPI 3.1 document, built from the app's routes and their pydantic models.

How a route is described (the one mechanism; every public route uses it): decorate its view with
`describe(...)`, naming the pydantic models of what it reads and answers, e.g.

    @bp.post("")
    @describe("Submit a job", body=JobCreate, responses={202: Job, 200: Job}, headers=[IDEMPOTENCY_KEY])
    def submit_job(): ...

- `body`: the JSON request body's model (`form`: a multipart form's model, fields as in the form);
- `query`: a model whose fields are the query parameters (all optional unless required in the model);
- `responses`: status -> the response model (`None`: no body); `EVENTS` as a model means text/event-stream;
  `also_events=True` adds a text/event-stream alternative to the 200 (OpenAI's `stream`);
- `headers`: extra request headers (`Header`), `public=True` for a route that needs no key.

Path parameters come from the route itself (`<job_id>` -> `{job_id}`, a string). Every described operation
also lists the error statuses in ERROR_STATUSES with the one error shape (`ErrorBody`). The schemas of all
named models go into `components/schemas` through pydantic (`models_json_schema`), so a request or response
shape is written once, as its model. A route without `describe` is left out of the document; the test
tests/api/test_openapi.py fails for any public route left out (the admin dashboard, static files and
/metrics are not part of the API). The document is built once per app and cached in its extensions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from api.response_schemas import ErrorBody, OpenApiDocument

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 422, 429, 503)
NOT_IN_API = ("admin.", "static", "metrics.")  # endpoints (by prefix) that are not part of the public API
F = TypeVar("F", bound=Callable[..., Any])


class EVENTS:
    """Marker for `responses`: a text/event-stream body (server-sent events)."""


@dataclass(frozen=True)
class Header:
    name: str
    description: str
    required: bool = False
    max_length: int | None = None


IDEMPOTENCY_KEY = Header(
    "Idempotency-Key",
    "1 to 200 characters: a retry with the same key and body returns the first request's job",
    max_length=200,
)
LAST_EVENT_ID = Header("Last-Event-ID", "resume a stream after this event id")


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, type[BaseModel] | type[EVENTS] | None]
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    headers: tuple[Header, ...] = ()
    public: bool = False
    also_events: bool = False
    description: str = ""

    def models(self) -> list[tuple[type[BaseModel], str]]:
        """(model, pydantic JSON-schema mode) of every model this operation names."""
        named = [(m, "validation") for m in (self.body, self.form, self.query) if m is not None]
        named += [(m, "serialization") for m in self.responses.values() if _is_model(m)]
        return named  # type: ignore[return-value]


Refs = Mapping[tuple[type[BaseModel], str], dict[str, Any]]


def describe(
    summary: str,
    *,
    responses: Mapping[int, type[BaseModel] | type[EVENTS] | None],
    body: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    headers: Iterable[Header] = (),
    public: bool = False,
    also_events: bool = False,
    description: str = "",
) -> Callable[[F], F]:
    """Attach an Operation to a view function (see the module docstring); the view is returned unchanged."""
    operation = Operation(summary, dict(responses), body, form, query, tuple(headers), public, also_events, description)

    def attach(view: F) -> F:
        view.openapi_operation = operation  # type: ignore[attr-defined]
        return view

    return attach


def operation_of(app: Flask, rule: Rule) -> Operation | None:
    return getattr(app.view_functions[rule.endpoint], "openapi_operation", None)


def public_rules(app: Flask) -> list[Rule]:
    """The app's routes that belong to the public API (those the document must describe)."""
    return [r for r in app.url_map.iter_rules() if not r.endpoint.startswith(NOT_IN_API)]


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def openapi_path(rule: Rule) -> str:
    """/v1/jobs/<job_id> -> /v1/jobs/{job_id} (converters such as `path:` dropped)."""
    path = rule.rule
    for argument in rule.arguments:
        path = path.replace(f"<{argument}>", "{" + argument + "}")
        for converter in ("path", "string", "int"):
            path = path.replace(f"<{converter}:{argument}>", "{" + argument + "}")
    return path


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _parameters(rule: Rule, op: Operation) -> list[dict[str, Any]]:
    params = [{"name": a, "in": "path", "required": True, "schema": {"type": "string"}} for a in sorted(rule.arguments)]
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            required = name in schema.get("required", [])
            params.append({"name": name, "in": "query", "required": required, "schema": prop})
    for h in op.headers:
        schema = {"type": "string", **({"maxLength": h.max_length} if h.max_length else {})}
        params.append(
            {"name": h.name, "in": "header", "required": h.required, "description": h.description, "schema": schema}
        )
    return params


def _responses(op: Operation, refs: Refs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, model in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": op.summary if status < 300 else "see the body"}
        if model is EVENTS:
            entry["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
        elif _is_model(model):
            entry["content"] = _json(refs[(model, "serialization")])  # type: ignore[index]
        out[str(status)] = entry
    if op.also_events and "200" in out:
        out["200"].setdefault("content", {})["text/event-stream"] = {"schema": {"type": "string"}}
    for status in ERROR_STATUSES:
        out.setdefault(str(status), {"$ref": "#/components/responses/Error"})
    return out


def _operation(rule: Rule, op: Operation, refs: Refs) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "operationId": rule.endpoint.replace(".", "_")}
    if op.description:
        doc["description"] = op.description
    if params := _parameters(rule, op):
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": True, "content": _json(refs[(op.body, "validation")])}
    elif op.form is not None:
        form = {"multipart/form-data": {"schema": refs[(op.form, "validation")]}}
        doc["requestBody"] = {"required": True, "content": form}
    doc["responses"] = _responses(op, refs)
    if op.public:
        doc["security"] = []
    return doc


def _components(models: Iterable[tuple[type[BaseModel], str]]) -> tuple[Refs, dict[str, Any]]:
    """Every named model's JSON schema (and those of the models it uses), and the $ref of each."""
    named = [*dict.fromkeys([*models, (ErrorBody, "serialization")])]
    refs, top = models_json_schema(named, ref_template=REF)  # type: ignore[arg-type]
    return refs, top.get("$defs", {})  # type: ignore[return-value]


def build_document(app: Flask) -> dict[str, Any]:
    described = [(rule, op) for rule in public_rules(app) if (op := operation_of(app, rule)) is not None]
    refs, schemas = _components(m for _, op in described for m in op.models())
    paths: dict[str, dict[str, Any]] = {}
    for rule, op in described:
        item = paths.setdefault(openapi_path(rule), {})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            item[method.lower()] = _operation(rule, op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Canvas", "version": "1", "description": "Jobs for block-diffusion language models."},
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
            "responses": {"Error": {"description": "An error", "content": _json(refs[(ErrorBody, "serialization")])}},
        },
    }


def app_document(app: Flask) -> dict[str, Any]:
    """The app's document, built on first use (routes do not change once the app serves)."""
    if "canvas.openapi" not in app.extensions:
        app.extensions["canvas.openapi"] = build_document(app)
    return app.extensions["canvas.openapi"]


@bp.get("/v1/openapi.json")
@describe("This document", responses={200: OpenApiDocument}, public=True)
def openapi_document() -> Response:
    return jsonify(app_document(current_app))
