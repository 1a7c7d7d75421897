"""GET /v1/openapi.json: the OpenAPI 3.1 document, built from the app's routes and their pydantic models.

How a route is described (the one mechanism; every public route uses it): decorate its view with
`describe(...)`, naming the pydantic models of what it reads and answers, e.g.

    @bp.post("")
    @describe("Submit a job", body=JobCreate, responses={202: Job, 200: Job}, headers=[IDEMPOTENCY_KEY])
    def submit_job(): ...

- `body`: the JSON request body's model (`form`: a multipart form's model, fields as in the form);
- `query`: a model whose fields are the query parameters (all optional unless required in the model);
- `responses`: status -> the response model (`None`: no body); `EVENTS` means text/event-stream, each
  event described by `ServerSentEvent` (OpenAPI 3.1: the media type's schema describes one event);
  `also_events=True` adds a text/event-stream alternative to the 200 (OpenAI's `stream`);
- `headers`: extra request headers (`Header`), `public=True` for a route that needs no key;
- `body_ids`: body field -> the endpoint (e.g. "files.upload_file") whose response `id` it takes.

Links (OpenAPI `links`, which schemathesis' stateful phase follows) are derived: from every operation that
answers an object with an `id` (or a list of them) to the operations on that id below its path, and from
the endpoints named in `body_ids` to those body fields (see `add_links`).

Path parameters come from the route itself (`<job_id>` -> `{job_id}`, a string). Every described operation
also lists the error statuses in ERROR_STATUSES with the one error shape (`ErrorBody`). The schemas of all
named models go into `components/schemas` through pydantic (`models_json_schema`), so a request or response
shape is written once, as its model. A route without `describe` is left out of the document; the test
tests/api/test_openapi.py fails for any public route left out (the admin dashboard, static files and
/metrics are not part of the API). The document is built once per app and cached in its extensions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from api.response_schemas import ErrorBody, OpenApiDocument, ServerSentEvent

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
    body_ids: Mapping[str, str] = field(default_factory=dict)

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
    body_ids: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Attach an Operation to a view function (see the module docstring); the view is returned unchanged."""
    operation = Operation(
        summary, dict(responses), body, form, query, tuple(headers), public, also_events, description, body_ids or {}
    )

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
            entry["content"] = {"text/event-stream": {"schema": refs[(ServerSentEvent, "serialization")]}}
        elif _is_model(model):
            entry["content"] = _json(refs[(model, "serialization")])  # type: ignore[index]
        out[str(status)] = entry
    if op.also_events and "200" in out:
        out["200"].setdefault("content", {})["text/event-stream"] = {"schema": refs[(ServerSentEvent, "serialization")]}
    for status in ERROR_STATUSES:
        out.setdefault(str(status), {"$ref": "#/components/responses/Error"})
    return out


def _operation(rule: Rule, op: Operation, refs: Refs) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(rule.endpoint)}
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
    named = [*dict.fromkeys([*models, (ErrorBody, "serialization"), (ServerSentEvent, "serialization")])]
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
    add_links(paths, described)
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


def _id_expression(model: Any) -> str | None:
    """Where a response of `model` holds an id: its own `id`, or its first item's in `data`."""
    if not _is_model(model):
        return None
    if "id" in model.model_fields:
        return "$response.body#/id"
    data = model.model_fields.get("data")
    items = [a for a in getattr(data.annotation, "__args__", ()) if _is_model(a)] if data is not None else []
    return "$response.body#/data/0/id" if items and "id" in items[0].model_fields else None


Described = list[tuple[str, str, Operation, dict[str, Any]]]  # (path, method, operation, its document)


def add_links(paths: dict[str, dict[str, Any]], described: list[tuple[Rule, Operation]]) -> None:
    """OpenAPI links, so that a fuzzer's (or a reader's) ids flow from one operation to the next: from an
    operation answering an object (or a list) with an `id`, to each operation on that id below the same
    path (POST /v1/jobs -> GET /v1/jobs/{job_id}, ...), the other path parameters taken from the request;
    and from the operation named in a target's `body_ids` to that body field (an uploaded file's id into
    a fine-tune's `training_file`)."""
    operations: Described = [
        (openapi_path(rule), method.lower(), op, paths[openapi_path(rule)][method.lower()])
        for rule, op in described
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    ]
    for source_path, _method, op, item in operations:
        for status, model in op.responses.items():
            expression = _id_expression(model) if 200 <= status < 300 else None
            if expression is not None and (links := _path_links(source_path, expression, operations)):
                item["responses"][str(status)]["links"] = links
    by_endpoint = {_operation_id(rule.endpoint): (openapi_path(rule), op) for rule, op in described}
    for target_path, target_method, op, target_item in operations:
        for field_name, endpoint in op.body_ids.items():
            source_path, source_op = by_endpoint[_operation_id(endpoint)]
            link = {"operationId": target_item["operationId"], "requestBody": {field_name: "$response.body#/id"}}
            for source_item in paths[source_path].values():
                if source_item["operationId"] != _operation_id(endpoint):
                    continue
                for status, model in source_op.responses.items():
                    if 200 <= status < 300 and _id_expression(model) == "$response.body#/id":
                        links = source_item["responses"][str(status)].setdefault("links", {})
                        links[f"{target_method.upper()} {target_path} {field_name}"] = link


def _path_links(source_path: str, expression: str, operations: Described) -> dict[str, Any]:
    """Links from an operation at `source_path` whose response holds an id at `expression` to every operation
    on that id: the path's next parameter takes the id, the source's own parameters come from its request."""
    links: dict[str, Any] = {}
    for target_path, target_method, _op, target_item in operations:
        if not target_path.startswith(source_path + "/{"):
            continue
        params = {target_path[len(source_path) + 2 :].split("}", 1)[0]: expression}
        params.update({name: f"$request.path.{name}" for name in _path_names(source_path)})
        if set(params) == set(_path_names(target_path)):
            links[f"{target_method.upper()} {target_path}"] = {
                "operationId": target_item["operationId"],
                "parameters": params,
            }
    return links


def _operation_id(endpoint: str) -> str:
    return endpoint.replace(".", "_")


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def app_document(app: Flask) -> dict[str, Any]:
    """The app's document, built on first use (routes do not change once the app serves)."""
    if "canvas.openapi" not in app.extensions:
        app.extensions["canvas.openapi"] = build_document(app)
    return app.extensions["canvas.openapi"]


@bp.get("/v1/openapi.json")
@describe("This document", responses={200: OpenApiDocument}, public=True)
def openapi_document() -> Response:
    return jsonify(app_document(current_app))
