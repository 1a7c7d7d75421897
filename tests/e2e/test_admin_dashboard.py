"""The admin dashboard in a real headless Chromium (Debian's, driven by Playwright) against a live API
server, a real generation worker, a webhook worker and a training worker (all three in this process).

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

from shared.db import session_scope
from shared.models import Job
from tests.conftest import TINY
from tests.e2e.live import Client, EmbeddedWorker, training_worker
from tests.e2e.receiver import Answer
from tests.e2e.test_fine_tunes import dataset, upload
from tests.e2e.test_generation_jobs import LONG
from tests.e2e.test_webhooks import endpoint, wait_delivery

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
SECONDS = {**LONG, "max_denoising_steps": 1000}  # 5 s unloaded (5 ms a step), longer beside tests: seen running
# Canvas after canvas of 100 steps each (about 15 s in all, canceled before): each new canvas starts from noise
# and settles. The tiny random model may write EOS, which ends a job: with this prompt and seed (found by
# running the engine) it writes none in these 8 canvases.
CANVASES = {**LONG, "max_new_tokens": 32 * 8, "max_denoising_steps": 100, "seed": 0}
CANVASES_PROMPT = [2, 119, 97, 116, 99, 104]


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
    expect(row(page, job["id"])).to_have_class(re.compile(r"\bnew\b"))
    expect(row(page, job["id"])).to_have_attribute("data-status", "running")
    expect(row(page, job["id"])).to_have_attribute("data-status", "succeeded")
    expect(row(page, job["id"])).to_have_class(re.compile(r"\bchanged\b"))  # marked: its status changed under our eyes
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
    job = client.submit(model=TINY, input_ids=CANVASES_PROMPT, params=CANVASES)
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


def test_a_failed_webhook_delivery_is_replayed_from_the_page(page: Page, live_api, keys, receiver, shots) -> None:
    client = Client(live_api.url, keys["a"])
    url = receiver.script("/hook", *[Answer(500)] * 5)  # every scheduled attempt fails; the replay gets a 200
    ep = endpoint(client, url, ["job.succeeded"])
    client.wait(client.submit(model=TINY, prompt="hook", params={"max_new_tokens": 8})["id"])
    failed = wait_delivery(client, ep["id"], "failed")
    log_in(page, keys["admin"])
    page.goto("/admin/webhooks?status=failed")
    delivery = page.locator(f'.deliveries tr[data-id="{failed["id"]}"]')
    expect(delivery).to_have_attribute("data-status", "failed")
    expect(delivery.locator("td.code")).to_have_text("500")
    expect(page.locator(".endpoints")).to_contain_text(url)
    shots(page, "webhooks")
    delivery.get_by_role("button", name="Replay").click()
    expect(page).to_have_url(re.compile(r"/admin/webhooks\?status=failed$"))
    assert len(receiver.wait_for("/hook", 6)) == 6
    assert {r.headers["webhook-id"] for r in receiver.at("/hook")} == {failed["id"]}  # the same message again
    wait_delivery(client, ep["id"], "delivered")
    page.goto("/admin/webhooks")
    expect(delivery).to_have_attribute("data-status", "delivered")
    expect(delivery.locator("td.code")).to_have_text("200")


@pytest.fixture(scope="module")
def train_worker(base_settings) -> Iterator[EmbeddedWorker]:
    with training_worker(base_settings) as worker:
        yield worker


def test_a_fine_tunes_loss_curve_grows_while_it_trains(page: Page, live_api, keys, train_worker, shots) -> None:
    client = Client(live_api.url, keys["a"])
    data = dataset("copy")
    hp = {"max_steps": 60, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5, "checkpoint_every": 20}
    body = {"base_model": TINY, "training_file": upload(client, data), "validation_file": upload(client, data)}
    response = client.http.post(
        f"{live_api.url}/v1/fine_tunes", json={**body, "suffix": "admin", "hyperparameters": hp}, timeout=30
    )
    assert response.status_code == 202, response.text
    ft = response.json()
    log_in(page, keys["admin"])
    page.goto(f"/admin/fine-tunes/{ft['id']}")
    page.evaluate("window.notReloaded = true")
    steps = page.locator("#ft-steps")
    page.wait_for_function("() => Number(document.getElementById('ft-steps').textContent) >= 1")
    seen = int(steps.inner_text())
    page.wait_for_function(  # more steps, more points, on the same page: the curve grows as it trains
        "([n]) => window.notReloaded && Number(document.getElementById('ft-steps').textContent) > n"
        " && document.querySelector('#loss-chart polyline').points.length > n",
        arg=[seen],
    )
    expect(page.locator("#ft-status .badge")).to_have_text("succeeded", timeout=120_000)
    expect(page.locator("#ft-result")).to_have_text(f"{TINY}:admin:{ft['id']}")
    expect(page.locator("#ft-steps")).to_have_text("60")
    assert page.locator("#loss-chart polyline[data-series='train loss']").evaluate("e => e.points.length") == 60
    expect(page.locator("#loss-chart circle.eval")).to_have_count(3)  # eval loss at steps 20, 40 and 60
    expect(page.locator(".checkpoints tbody tr")).to_have_count(2)
    shots(page, "fine_tune")
    page.goto("/admin/fine-tunes")
    expect(page.locator(f'.fine-tunes tr[data-id="{ft["id"]}"]')).to_contain_text(f"{TINY}:admin:{ft['id']}")
    shots(page, "fine_tunes")


def test_workers_queues_and_the_last_hour(page: Page, live_api, keys, settings, train_worker, shots) -> None:
    client = Client(live_api.url, keys["a"])
    jobs = [client.submit(model=TINY, prompt="count me", params={"max_new_tokens": 32}) for _ in range(3)]
    for job in jobs:
        client.wait(job["id"])
    with session_scope(settings.database_url) as session:
        worker_id = session.get(Job, jobs[0]["id"]).worker
    log_in(page, keys["admin"])
    page.goto("/admin/workers")
    serving = page.locator(f'.workers tr[data-worker-id="{worker_id}"]')
    expect(serving).to_have_attribute("data-kind", "serve")
    expect(serving).to_contain_text(TINY)
    expect(serving.locator("td").nth(3)).to_have_text("cpu")
    expect(serving.locator("td").nth(5)).to_have_text("0")  # rows in flight: none now
    assert float(serving.locator("td").nth(6).inner_text()) > 0  # tokens/s over the last minutes
    expect(page.locator(".workers tr[data-kind=train]").first).to_be_visible()
    expect(page.locator(".workers tr[data-kind=webhooks]").first).to_be_visible()
    expect(page.locator(f'.queues tr[data-queue="gen.{TINY}"] td.num')).to_have_text("0")
    expect(page.locator('.queues tr[data-queue="train"]')).to_be_visible()
    expect(page.locator("h2", has_text="Last hour")).to_contain_text("3 jobs finished, 0 failed")
    expect(page.locator(".charts svg.bars rect.bar")).to_have_count(60)  # one bar a minute
    expect(page.locator(".charts svg.failure-bars rect.bar")).to_have_count(60)
    shots(page, "workers")
    # The page refreshes itself: two more jobs show up in the last hour without a reload.
    page.evaluate("window.notReloaded = true")
    for job in [client.submit(model=TINY, prompt="count me", params={"max_new_tokens": 8}) for _ in range(2)]:
        client.wait(job["id"])
    expect(page.locator("h2", has_text="Last hour")).to_contain_text("5 jobs finished, 0 failed", timeout=15_000)
    assert page.evaluate("window.notReloaded") is True
