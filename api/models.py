"""/v1/models: the servable models of the registry (public ones and the tenant's own fine-tunes)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.auth import authenticate_request, current_principal
from api.openapi import describe
from api.response_schemas import Model, ModelList
from api.state import db_session
from shared.errors import NotFound
from shared.models import ModelRecord
from shared.views import iso

bp = Blueprint("models", __name__, url_prefix="/v1/models")
bp.before_request(authenticate_request)


def visible_model(session: Session, name: str, param: str = "model", tenant_id: str | None = None) -> ModelRecord:
    """The model, if it is public or the tenant's own (by default the caller's); otherwise 404 naming it."""
    tenant_id = tenant_id or current_principal().tenant_id
    model = session.get(ModelRecord, name)
    if model is None or (model.tenant_id is not None and model.tenant_id != tenant_id):
        raise NotFound(f"model {name!r} does not exist; GET /v1/models lists the available ones", param)
    return model


def model_view(model: ModelRecord) -> dict[str, object]:
    """OpenAI's model object (`id`, `object`, `created` in Unix seconds, `owned_by`) and ours."""
    return {
        "id": model.name, "object": "model", "created": int(model.created_at.timestamp()),
        "owned_by": "tenant" if model.tenant_id else "public", "canvas_length": model.canvas_length,
        "max_positions": model.max_positions, "vocab_size": model.vocab_size, "base_model": model.base_model,
        "fine_tune": model.fine_tune_job_id,
        "quantization": model.quantization, "weight_bytes": model.weight_bytes,
        "created_at": iso(model.created_at),
    }  # fmt: skip


@bp.get("")
@describe("List models", responses={200: ModelList})
def list_models() -> Response:
    tenant = current_principal().tenant_id
    stmt = select(ModelRecord).where(or_(ModelRecord.tenant_id.is_(None), ModelRecord.tenant_id == tenant))
    rows = db_session().scalars(stmt.order_by(ModelRecord.name))
    return jsonify({"object": "list", "data": [model_view(m) for m in rows]})


@bp.get("/<path:name>")
@describe("Get a model", responses={200: Model})
def get_model(name: str) -> Response:
    return jsonify(model_view(visible_model(db_session(), name)))
