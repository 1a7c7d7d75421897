"""The admin dashboard in a real headless Chromium (Debian's, driven by Playwright) against a live API
server, a real generation worker, a webhook worker and a training worker.

Screenshots of each main page are taken along the way; with CANVAS_SCREENSHOT_DIR set they are kept
there too (docs/screenshots/ holds the README's copies).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import TINY
from tests.e2e.live import Client
from tests.e2e.test_generation_jobs import LONG

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000
SECONDS = {**LONG, "max_denoising_steps": 150}  # about 2-3 s on the CPU: long enough to be seen running
# Canvas after canvas of 100 steps each (about 20 s in all): each new canvas starts from noise and settles.
CANVASES = {**LONG, "max_new_tokens": 32 * 12, "max_denoising_steps": 100}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=WAIT_MS)  # a busy 2-core machine: waits are generous, never sleeps
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, live_api) -> Iterator[Page]:
    context = browser.new_context(base_url=live_api.url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path: Path):
    """page -> name -> a full-page PNG in the test's folder (and in CANVAS_SCREENSHOT_DIR, if set)."""
    keep = os.environ.get("CANVAS_SCREENSHOT_DIR")

    def take(page: Page, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000  # a rendered page, not a blank one
        if keep:
            shutil.copy(path, Path(keep) / path.name)
        return path

    return take


def log_in(page: Page, key: str) -> None:
    page.goto("/admin/login")
    page.fill("#key", key)
    page.click("button[type=submit]")


def row(page: Page, job_id: str):
    return page.locator(f'#jobs tr[data-id="{job_id}"]')


def test_a_non_admin_key_is_refused(page: Page, keys) -> None:
    log_in(page, keys["a"])
    expect(page.get_by_role("alert")).to_contain_text("not an admin key")
    page.goto("/admin/jobs")
    expect(page).to_have_url(re.compile(r"/admin/login\?next=/admin/jobs$"))


def test_a_new_job_appears_and_changes_status_without_a_reload(page: Page, live_api, keys, shots) -> None:
    log_in(page, keys["admin"])
    expect(page.locator("h1")).to_have_text("Jobs")
    expect(page.locator("#jobs tr.empty")).to_contain_text("No jobs yet")
    page.evaluate("window.notReloaded = true")
    client = Client(live_api.url, keys["a"])
    job = client.submit(model=TINY, prompt="appear", params=SECONDS)
    expect(row(page, job["id"])).to_have_class("new")
    expect(row(page, job["id"])).to_have_attribute("data-status", "running")
    expect(row(page, job["id"])).to_have_attribute("data-status", "succeeded")
    expect(row(page, job["id"])).to_have_class("changed")  # marked: its status changed under our eyes
    for _ in range(3):
        client.submit(model=TINY, prompt="more", params={"max_new_tokens": 32, "max_denoising_steps": 8})
    expect(page.locator("#jobs tbody tr")).to_have_count(4)
    client.wait(job["id"])
    assert page.evaluate("window.notReloaded") is True
    shots(page, "jobs")
    page.select_option("select[name=status]", "succeeded")
    page.click("form.filters button[type=submit]")
    expect(page.locator("#jobs tbody tr[data-status=succeeded]").first).to_be_visible()


def test_watch_the_live_canvas_then_cancel_from_the_page(page: Page, live_api, keys, shots) -> None:
    client = Client(live_api.url, keys["a"])
    job = client.submit(model=TINY, prompt="watch the canvas", params=CANVASES)
    client.wait(job["id"], {"running"})
    log_in(page, keys["admin"])
    page.goto(f"/admin/jobs/{job['id']}")
    grid = page.locator("#canvas-grid")
    expect(grid.locator("span")).to_have_count(32)  # one cell per canvas position of the tiny model
    cells = grid.inner_text()
    page.wait_for_function(
        "([canvas]) => Number(document.getElementById('canvas-grid').dataset.canvas) > Number(canvas)",
        arg=[grid.get_attribute("data-canvas")],
    )
    expect(grid).not_to_have_text(cells)  # the next canvas: new tokens, settling step by step
    expect(grid.locator("span.changed").first).to_be_attached()
    expect(page.locator("#committed")).not_to_be_empty()
    shots(page, "job")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-status .badge")).to_have_text("canceled")
    assert client.get(job["id"])["status"] == "canceled"
    expect(page.locator(".timeline")).to_contain_text("canceling")
    expect(page.get_by_role("button", name="Retry as a new job")).to_be_visible()
