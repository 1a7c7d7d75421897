"""Bearer-key authentication. Keys are looked up by hash; the plain key is never logged or stored."""

from __future__ import annotations

from flask import g, request

from api.state import db_session
from shared.errors import Forbidden, Unauthorized
from shared.keys import Principal, authenticate
from shared.logs import bind


def authenticate_request() -> None:
    """Set g.principal from the Authorization header, or raise Unauthorized (401)."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    principal = authenticate(db_session(), key.strip())
    if principal is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)")
    g.principal = principal
    bind(tenant=principal.tenant_id)  # on every log line of the request (shared/logs.py)


def current_principal() -> Principal:
    return g.principal


def require_admin() -> Principal:
    principal = current_principal()
    if not principal.is_admin:
        raise Forbidden("this route needs an admin key")
    return principal
