"""/v1/models: the servable models of the registry."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import select

from api.auth import authenticate_request
from api.state import db_session
from shared.errors import NotFound
from shared.models import ModelRecord

bp = Blueprint("models", __name__, url_prefix="/v1/models")
bp.before_request(authenticate_request)


def model_view(model: ModelRecord) -> dict[str, object]:
    return {
        "id": model.name,
        "object": "model",
        "canvas_length": model.canvas_length,
        "max_positions": model.max_positions,
        "vocab_size": model.vocab_size,
        "created_at": model.created_at.isoformat().replace("+00:00", "Z"),
    }


@bp.get("")
def list_models() -> Response:
    rows = db_session().scalars(select(ModelRecord).order_by(ModelRecord.name))
    return jsonify({"object": "list", "data": [model_view(m) for m in rows]})


@bp.get("/<path:name>")
def get_model(name: str) -> Response:
    model = db_session().get(ModelRecord, name)
    if model is None:
        raise NotFound(f"model {name!r} does not exist", "model")
    return jsonify(model_view(model))
