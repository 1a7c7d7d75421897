"""The dashboard's jobs table: keyset pages over every tenant's jobs, filters, search by id, the JSON poll,
empty states; and the job page with its retry action."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from shared.db import session_scope
from shared.models import Job, JobEvent
from tests.api.test_admin_access import admin_login, seed_jobs
from tests.conftest import TINY

ROW_ID = re.compile(r'<tr data-id="([^"]+)"')


def ids_on(html: str) -> list[str]:
    return ROW_ID.findall(html)


def next_link(html: str) -> str | None:
    found = re.search(r'rel="next" href="([^"]+)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


def walk(client, path: str) -> list[list[str]]:
    """Every page of the table, following the 'Older' links."""
    pages = []
    while path:
        html = client.get(path).text
        pages.append(ids_on(html))
        path = next_link(html)
    return pages


def test_keyset_pages_of_100_rows_cover_every_job_once_newest_first(client, keys, settings) -> None:
    ids = seed_jobs(settings.database_url, 230)
    admin_login(client, keys["admin"])
    pages = walk(client, "/admin/jobs?limit=100")
    assert [len(p) for p in pages] == [100, 100, 30]
    assert [i for p in pages for i in p] == ids[::-1]
    assert [len(p) for p in walk(client, "/admin/jobs")] == [50] * 4 + [30]  # the default page size


def test_a_job_created_between_two_pages_neither_repeats_nor_shifts_them(client, keys, settings) -> None:
    ids = seed_jobs(settings.database_url, 150)
    admin_login(client, keys["admin"])
    first = client.get("/admin/jobs?limit=100").text
    seed_jobs(settings.database_url, 1, datetime(2026, 2, 1, tzinfo=UTC), tenant_id="ten_late", status="queued")
    second = client.get(next_link(first)).text
    assert ids_on(second) == ids[:50][::-1]


def test_filters_and_search(client, keys, settings) -> None:
    seed_jobs(settings.database_url, 5)
    failed = seed_jobs(settings.database_url, 3, status="failed", tenant_id="ten_other")
    tuned = seed_jobs(settings.database_url, 2, status="running", kind="fine_tune")
    admin_login(client, keys["admin"])
    assert set(ids_on(client.get("/admin/jobs?status=failed").text)) == set(failed)
    assert set(ids_on(client.get("/admin/jobs?tenant=ten_other").text)) == set(failed)
    assert set(ids_on(client.get("/admin/jobs?kind=fine_tune").text)) == set(tuned)
    assert ids_on(client.get("/admin/jobs?model=tiny&status=running&kind=fine_tune").text) == tuned[::-1]
    assert ids_on(client.get("/admin/jobs?model=other").text) == []
    assert ids_on(client.get(f"/admin/jobs?q={failed[1]}&status=succeeded").text) == [failed[1]]
    html = client.get("/admin/jobs?q=job_missing").text
    assert ids_on(html) == [] and "No job has the id job_missing" in html
    assert "No job matches these filters" in client.get("/admin/jobs?model=other").text
    response = client.get("/admin/jobs?status=exploded")
    assert response.status_code == 422 and "status must be one of" in response.text


def test_the_empty_table_says_how_to_fill_it(client, keys) -> None:
    admin_login(client, keys["admin"])
    assert "No jobs yet. Submit one with POST /v1/jobs" in client.get("/admin/jobs").text


def test_the_poll_endpoint_returns_the_rows_and_their_statuses(client, keys, settings) -> None:
    (job_id,) = seed_jobs(settings.database_url, 1, status="queued")
    admin_login(client, keys["admin"])
    data = client.get("/admin/jobs.json").get_json()
    assert data["rows"] == [{"id": job_id, "status": "queued"}]
    assert f'data-id="{job_id}" data-status="queued"' in data["html"]
    assert data["counts"]["queued"] == 1
    with session_scope(settings.database_url) as session:
        session.get(Job, job_id).status = "running"
    assert client.get("/admin/jobs.json").get_json()["rows"] == [{"id": job_id, "status": "running"}]
    assert client.get("/admin/jobs.json?status=queued").get_json()["rows"] == []


def test_the_job_page_shows_parameters_timeline_and_output(client, keys, settings) -> None:
    (job_id,) = seed_jobs(settings.database_url, 1, output={"text": "the <b>answer</b>", "token_ids": [5]})
    admin_login(client, keys["admin"])
    html = client.get(f"/admin/jobs/{job_id}").text
    assert "the &lt;b&gt;answer&lt;/b&gt;" in html  # escaped
    assert "&#34;seed&#34;: 0" in html
    assert 'class="timeline"' in html and "queued" in html
    assert "No deliveries" in html
    missing = client.get("/admin/jobs/job_nope")
    assert missing.status_code == 404 and "no job with id" in missing.text


def test_retry_makes_a_new_job_with_the_same_input_and_links_both(client, keys, settings) -> None:
    (job_id,) = seed_jobs(settings.database_url, 1, status="failed", error={"type": "x", "message": "boom"})
    token = admin_login(client, keys["admin"])
    response = client.post(f"/admin/jobs/{job_id}/retry", data={"csrf_token": token})
    assert response.status_code == 302
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    with session_scope(settings.database_url) as session:
        old, new = session.get(Job, job_id), session.get(Job, new_id)
        assert (new.status, new.tenant_id, new.params, new.input_ids) == ("queued", old.tenant_id, old.params, [1])
        types = [e.type for e in session.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id)]
    assert types == ["status", "retried"]
    assert f'retry of <a href="/admin/jobs/{job_id}">' in client.get(f"/admin/jobs/{new_id}").text
    response = client.post(f"/admin/jobs/{new_id}/retry", data={"csrf_token": token})
    assert response.status_code == 409 and "only a finished job can be retried" in response.text


def test_non_ascii_digits_and_huge_ids_are_a_clear_422(client, keys) -> None:
    """Superscript and Arabic-Indic digits pass str.isdigit(); int('²') raised a 500. Ids past the
    vocabulary are refused too."""
    admin_login(client, keys["admin"])
    for path in ("/admin/jobs?limit=%C2%B2", "/admin/batches?limit=%C2%B2", "/admin/fine-tunes?limit=%D9%A1"):
        response = client.get(path)
        assert response.status_code == 422, (path, response.status_code)
        assert "limit" in response.text
    pieces = f"/admin/models/{TINY}/pieces.json"
    assert client.get(f"{pieces}?ids=1,2").status_code == 200
    for ids in ("%C2%B2", "%D9%A1", "99999999999999999999999", "9" * 5000):
        response = client.get(f"{pieces}?ids={ids}")
        assert response.status_code == 422, (ids, response.status_code, response.text[:200])
        assert "ids" in response.text
