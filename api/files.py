"""/v1/files: uploads (multipart), per tenant, with size limit and sha256; list, get, content, delete."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import func, select

from api.auth import authenticate_request, current_principal
from api.openapi import describe
from api.response_schemas import File, FileList
from api.schemas import FileUpload
from api.state import db_session, settings
from shared.errors import InvalidRequest, NotFound, QuotaExceeded
from shared.files import new_file
from shared.models import StoredFile
from shared.views import iso

bp = Blueprint("files", __name__, url_prefix="/v1/files")
bp.before_request(authenticate_request)
PURPOSES = ("fine-tune", "batch")  # uploads; the Batch API writes "batch_output" files itself


def file_view(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "purpose": f.purpose,
        "filename": f.filename,
        "bytes": f.bytes,
        "sha256": f.sha256,
        "lines": f.lines,
        "created_at": iso(f.created_at),
    }


def get_file(file_id: str, param: str = "id") -> StoredFile:
    row = db_session().get(StoredFile, file_id)
    if row is None or row.tenant_id != current_principal().tenant_id:
        raise NotFound(f"no file with id {file_id!r}", param)
    return row


@bp.post("")
@describe("Upload a file", form=FileUpload, responses={201: File})
def upload_file() -> Response:
    request.max_content_length = settings().max_file_bytes  # files may be larger than JSON bodies
    purpose = request.form.get("purpose")
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", "purpose")
    upload = request.files.get("file")
    if upload is None:
        raise InvalidRequest("send the file as multipart form field 'file'", "file")
    content = upload.read()
    if not content:
        raise InvalidRequest("the file is empty", "file")
    check_quota(current_principal().tenant_id, len(content))
    row = new_file(current_principal().tenant_id, purpose, upload.filename or "upload.jsonl", content)
    session = db_session()
    session.add(row)
    session.commit()
    response = jsonify(file_view(row))
    response.status_code = 201
    return response


def check_quota(tenant_id: str, adding: int) -> None:
    """Raise QuotaExceeded if the tenant's files plus `adding` bytes would pass CANVAS_FILE_QUOTA_BYTES.
    (Two uploads at the same moment may both pass: the quota can be overshot by one upload each.)"""
    quota = settings().file_quota_bytes
    if quota <= 0:
        return
    held = db_session().scalar(
        select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(StoredFile.tenant_id == tenant_id)
    )
    if held + adding > quota:
        raise QuotaExceeded(
            f"this file ({adding} bytes) does not fit the file storage quota: the tenant holds {held} of "
            f"{quota} bytes; delete files (DELETE /v1/files/{{id}}) to make room",
            "file",
        )


@bp.get("")
@describe("List files", responses={200: FileList})
def list_files() -> Response:
    stmt = select(StoredFile).where(StoredFile.tenant_id == current_principal().tenant_id)
    rows = db_session().scalars(stmt.order_by(StoredFile.created_at.desc()).limit(100))
    return jsonify({"object": "list", "data": [file_view(f) for f in rows]})


@bp.get("/<file_id>")
@describe("Get a file's description", responses={200: File})
def get_file_route(file_id: str) -> Response:
    return jsonify(file_view(get_file(file_id)))


@bp.get("/<file_id>/content")
@describe("Get a file's content (a batch's output or error file: JSON lines)", responses={200: None})
def file_content(file_id: str) -> Response:
    """The file's bytes: an upload as sent, or a batch's output or error file (JSONL)."""
    row = get_file(file_id)
    return Response(row.content, mimetype="application/jsonl" if row.filename.endswith(".jsonl") else None)


@bp.delete("/<file_id>")
@describe("Delete a file", responses={204: None})
def delete_file(file_id: str) -> Response:
    row = get_file(file_id)
    session = db_session()
    session.delete(row)
    session.commit()
    return Response(status=204)
