"""The admin dashboard lets in admin keys only, keeps a session cookie, and refuses POSTs without the
session's CSRF token."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from shared.db import session_scope
from shared.keys import revoke_key
from shared.models import ApiKey, Job, JobEvent
from tests.conftest import TINY

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    return TOKEN.search(html).group(1)


def admin_login(client, key: str) -> str:
    """Log the test client in through the form; returns the session's CSRF token."""
    token = csrf_of(client.get("/admin/login").text)
    response = client.post("/admin/login", data={"key": key, "csrf_token": token})
    assert response.status_code == 302, response.text
    return csrf_of(client.get("/admin/jobs").text)


def seed_jobs(database_url: str, count: int, start: datetime = datetime(2026, 1, 1, tzinfo=UTC), **fields) -> list[str]:
    """`count` jobs one second apart from `start` (newest last), written as the API would write them."""
    ids = []
    with session_scope(database_url) as session:
        for i in range(count):
            values = {"tenant_id": "ten_seed", "kind": "generate", "model": TINY, "status": "succeeded"}
            values |= {"input": {"prompt": "p"}, "input_ids": [1], "params": {"seed": i}, **fields}
            job = Job(id=f"job_{i:05d}_{uuid.uuid4().hex[:8]}", created_at=start + timedelta(seconds=i), **values)
            session.add(job)
            session.flush()
            session.add(JobEvent(job_id=job.id, type="status", status="queued", created_at=job.created_at))
            ids.append(job.id)
    return ids


def test_pages_need_a_session(client, keys) -> None:
    response = client.get("/admin/jobs?status=queued")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=/admin/jobs")
    assert client.get("/admin/jobs.json").status_code == 401
    assert client.get("/admin/workers", headers={"Authorization": f"Bearer {keys['admin']}"}).status_code == 302


def test_a_non_admin_key_is_refused(client, keys) -> None:
    token = csrf_of(client.get("/admin/login").text)
    response = client.post("/admin/login", data={"key": keys["a"], "csrf_token": token})
    assert response.status_code == 403
    assert "not an admin key" in response.text and "--admin" in response.text
    assert client.get("/admin/jobs").status_code == 302
    response = client.post("/admin/login", data={"key": "cvs_nonsense", "csrf_token": token})
    assert response.status_code == 401 and "not valid" in response.text


def test_an_admin_key_logs_in_and_the_next_page_is_kept_inside_the_dashboard(client, keys) -> None:
    token = csrf_of(client.get("/admin/login?next=/admin/workers").text)
    response = client.post("/admin/login", data={"key": keys["admin"], "csrf_token": token, "next": "/admin/workers"})
    assert response.headers["Location"] == "/admin/workers"
    assert client.get("/admin/workers").status_code == 200
    client.post("/admin/logout", data={"csrf_token": csrf_of(client.get("/admin/jobs").text)})
    token = csrf_of(client.get("/admin/login").text)
    response = client.post("/admin/login", data={"key": keys["admin"], "csrf_token": token, "next": "//evil.example"})
    assert response.headers["Location"] == "/admin/jobs"


def test_the_cookie_holds_no_key_and_is_http_only(client, keys) -> None:
    token = csrf_of(client.get("/admin/login").text)
    response = client.post("/admin/login", data={"key": keys["admin"], "csrf_token": token})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert keys["admin"] not in cookie


def test_login_needs_the_csrf_token(client, keys) -> None:
    client.get("/admin/login")
    response = client.post("/admin/login", data={"key": keys["admin"]})
    assert response.status_code == 403
    assert "reload the page" in response.text
    assert client.get("/admin/jobs").status_code == 302


def test_actions_without_the_csrf_token_are_refused(client, keys, settings) -> None:
    (job_id,) = seed_jobs(settings.database_url, 1, status="queued")
    token = admin_login(client, keys["admin"])
    assert client.post(f"/admin/jobs/{job_id}/cancel").status_code == 403
    assert client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": "forged"}).status_code == 403
    assert client.post(f"/admin/jobs/{job_id}/retry", data={}).status_code == 403
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).status == "queued"
    response = client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": token})
    assert response.status_code == 302
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).status == "canceled"


def test_revoking_the_key_ends_its_sessions(client, keys, settings) -> None:
    admin_login(client, keys["admin"])
    assert client.get("/admin/jobs").status_code == 200
    with session_scope(settings.database_url) as session:
        key_id = session.query(ApiKey).filter_by(is_admin=True).one().id
        revoke_key(session, key_id)
    assert client.get("/admin/jobs").status_code == 302


def test_pages_load_nothing_from_another_origin(client, keys) -> None:
    admin_login(client, keys["admin"])
    for path in ("/admin/jobs", "/admin/fine-tunes", "/admin/workers", "/admin/webhooks"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert not re.search(r'(src|href)="(https?:)?//', response.text), path


def test_an_unknown_dashboard_address_is_an_html_page_and_the_api_stays_json(client, keys) -> None:
    admin_login(client, keys["admin"])
    response = client.get("/admin/no-such-page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "no such dashboard page" in response.text and 'href="/admin/jobs"' in response.text
    api = client.get("/v1/no-such-route")
    assert api.status_code == 404 and api.get_json()["error"]["message"] == "no such route"


def test_the_cookie_is_secure_over_https_and_with_the_setting(app, keys, settings) -> None:
    from api.app import create_app

    def login_cookie(client, base_url: str) -> str:
        token = csrf_of(client.get("/admin/login", base_url=base_url).text)
        response = client.post("/admin/login", data={"key": keys["admin"], "csrf_token": token}, base_url=base_url)
        return response.headers["Set-Cookie"]

    assert "Secure" not in login_cookie(app.test_client(), "http://localhost")
    assert "Secure" in login_cookie(app.test_client(), "https://localhost")
    behind_proxy = create_app(settings.with_(secure_cookies=True))
    assert "Secure" in login_cookie(behind_proxy.test_client(), "http://localhost")


def test_logout_ends_the_session_server_side(app, keys) -> None:
    """A copy of the cookie taken before logging out no longer opens the dashboard."""
    client = app.test_client()
    token = admin_login(client, keys["admin"])
    stolen = client.get_cookie("canvas_admin", path="/admin").value
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    replayed = app.test_client()
    replayed.set_cookie("canvas_admin", stolen, path="/admin")
    assert replayed.get("/admin/jobs").status_code == 302  # to the login page
    again = app.test_client()
    admin_login(again, keys["admin"])  # a new login gets a new session
    assert again.get("/admin/jobs").status_code == 200
