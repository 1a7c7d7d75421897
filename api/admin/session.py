"""Admin sessions: an admin API key logs in, a signed cookie keeps the session, a CSRF token guards POSTs.

The cookie holds the key's id and a random session id, never the key; every request checks that the key
is still an unrevoked admin key, so revoking it ends its sessions, and that the session was not logged
out: logging out records the session id in Redis for as long as a cookie could live, so a copy of the
cookie taken before is refused too. (Redis unreachable: the check is skipped with a warning rather than
locking every admin out.) The cookie is `Secure` when the request came over HTTPS, or always with
CANVAS_SECURE_COOKIES=true (behind a proxy that ends TLS and forwards plain HTTP).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import timedelta

import redis
from flask import Flask, Response, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from api.admin.blueprint import bp
from api.state import db_session, events_client
from shared.errors import Forbidden
from shared.keys import Principal, authenticate
from shared.models import ApiKey

SESSION_KEY = "admin_key_id"
CSRF_FIELD = "csrf_token"
OPEN_ENDPOINTS = {"admin.login", "admin.static"}
SESSION_LIFETIME = timedelta(hours=12)
LOGGED_OUT = "canvas:admin:logged_out:{sid}"
log = logging.getLogger(__name__)


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with `Secure` set on cookies answered over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def _logged_out(sid: str) -> bool:
    try:
        return bool(events_client().exists(LOGGED_OUT.format(sid=sid)))
    except redis.RedisError as exc:
        log.warning("cannot check whether admin session was logged out (Redis: %s); letting it through", exc)
        return False


class CsrfFailed(Forbidden):
    """A POST without the session's CSRF token (a forged request, or a page from before a new login)."""


def csrf_token() -> str:
    """The session's CSRF token, made on first use; forms send it back in a hidden field."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    sent = request.form.get(CSRF_FIELD) or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfFailed("the form's security token is missing or out of date; reload the page and try again")


def session_principal() -> Principal | None:
    """The admin of this session, or None (no session, or the key was revoked or lost its admin scope)."""
    key_id, sid = session.get(SESSION_KEY), session.get("sid")
    if not key_id or not isinstance(sid, str) or _logged_out(sid):
        return None
    row = db_session().get(ApiKey, key_id)
    if row is None or row.revoked_at is not None or not row.is_admin:
        return None
    g.admin_name = row.name
    return Principal(key_id=row.id, tenant_id=row.tenant_id, is_admin=True)


def wants_json() -> bool:
    return request.path.endswith(".json") or request.path.endswith("/events")


@bp.before_request
def require_admin_session() -> Response | None:
    """CSRF on every POST (the login form's too), then an admin session on every page but the login."""
    if request.method == "POST":
        check_csrf()
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    principal = session_principal()
    if principal is None:
        session.pop(SESSION_KEY, None)
        if wants_json():
            return Response('{"error": "log in at /admin/login"}', status=401, mimetype="application/json")
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    g.admin = principal
    return None


@bp.app_context_processor
def template_globals() -> dict[str, object]:
    return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD}


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard (no open redirect to another site)."""
    if target and target.startswith("/admin/") and not target.startswith("//"):
        return target
    return url_for("admin.jobs_page")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("admin/login.html", next=request.args.get("next"))
    principal = authenticate(db_session(), (request.form.get("key") or "").strip())
    if principal is None:
        error = "This key is not valid (unknown or revoked). Paste the whole key, starting with cvs_."
        return render_template("admin/login.html", error=error, next=request.form.get("next")), 401
    if not principal.is_admin:
        error = "This key is not an admin key. Create one with: canvas keys create --name NAME --admin"
        return render_template("admin/login.html", error=error, next=request.form.get("next")), 403
    session.clear()
    session[SESSION_KEY] = principal.key_id
    session["sid"] = secrets.token_urlsafe(24)  # what logout revokes, server-side
    session["csrf"] = secrets.token_urlsafe(32)  # a new token per login
    session.permanent = True
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> Response:
    """End the session here and server-side: its id is refused until any cookie carrying it has expired."""
    if isinstance(sid := session.get("sid"), str):
        seconds = int(SESSION_LIFETIME.total_seconds())
        try:
            events_client().set(LOGGED_OUT.format(sid=sid), "1", ex=seconds)
        except redis.RedisError as exc:
            log.warning("could not record the admin logout server-side (Redis: %s)", exc)
    session.clear()
    return redirect(url_for("admin.login"))
