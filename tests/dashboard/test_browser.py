"""The dashboard in a real browser: Playwright driving Debian's Chromium. Screenshots go to screenshots/."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboard.demo import fill
from llmlens.app import Services

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "screenshots"
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed (.ci/run installs it)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def populated(server: str, api_key: str, services: Services) -> tuple[str, str]:
    async def go() -> None:
        await fill(services.writer, services.prices, "default", 3000)

    asyncio.run_coroutine_threadsafe(go(), _loop_of(services)).result(60)
    deadline = time.monotonic() + 20
    while services.ch.query("SELECT count() AS n FROM request_events FINAL") != [{"n": 3000}]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    services.control.create_user("ada@example.com", "correct horse battery")
    return server, api_key


def _loop_of(services: Services) -> Any:
    task = services.writer._task  # the server's event loop runs the writer
    assert task is not None
    return task.get_loop()


def test_dashboard_in_chromium(populated: tuple[str, str], services: Services) -> None:
    from playwright.sync_api import sync_playwright

    server, key = populated
    auth = {"Authorization": f"Bearer {key}"}
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
        page.goto(f"{server}/")
        assert page.url.startswith(f"{server}/login")
        page.screenshot(path=str(SHOTS / "login.png"))
        page.fill("input[name=email]", "ada@example.com")
        page.fill("input[name=password]", "correct horse battery")
        page.click("button:has-text('Sign in')")
        page.wait_for_selector("#kpi-requests")

        page.select_option("select[name=range]", "30d")
        page.wait_for_function("document.querySelector('#kpi-requests').textContent === '3,000'")
        api = httpx.get(f"{server}/api/v1/overview?range=30d", headers=auth).json()["kpis"]
        assert page.get_attribute("#kpi-cost", "title") == f"${api['cost_usd']}"
        assert "range=30d" in page.url  # the view is in the URL
        page.wait_for_selector("div.chart .main-svg")  # Plotly drew the charts
        page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

        page.fill("input[name=property]", "team=search")
        page.press("input[name=property]", "Enter")
        search = httpx.get(f"{server}/api/v1/overview?range=30d&property=team%3Dsearch", headers=auth).json()["kpis"]
        page.wait_for_function(f"document.querySelector('#kpi-requests').textContent === '{search['requests']:,}'")
        assert page.get_attribute("#kpi-cost", "title") == f"${search['cost_usd']}"
        page.go_back()
        page.wait_for_function("document.querySelector('#kpi-requests').textContent === '3,000'")

        page.goto(f"{server}/requests?range=30d")
        page.screenshot(path=str(SHOTS / "requests.png"), full_page=True)
        page.click("table.requests tbody tr:first-child a")
        page.wait_for_selector("section.transcript")
        assert "You are a helpful assistant." in page.text_content("section.transcript")
        page.screenshot(path=str(SHOTS / "request.png"), full_page=True)

        page.goto(f"{server}/requests?range=30d&model=gpt-4o")
        with page.expect_download() as dl:
            page.click("a:has-text('Export CSV')")
        exported = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        expected, cursor = [], None
        while True:
            body = httpx.get(f"{server}/api/v1/requests", headers=auth,
                             params={"model": "gpt-4o", "limit": "1000", "start": "2000-01-01T00:00:00Z",
                                     **({"cursor": cursor} if cursor else {})}).json()
            expected += body["data"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert [(r["request_id"], r["cost_usd"]) for r in exported] == [(e["request_id"], e["cost_usd"] or "") for e in expected]

        for name in ("properties", "users", "settings"):
            page.goto(f"{server}/{name}?range=30d" if name != "settings" else f"{server}/settings")
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        # sessions: the list, then one session's tree and timeline; a click on a bar opens that request
        page.goto(f"{server}/sessions?range=30d")
        page.screenshot(path=str(SHOTS / "sessions.png"), full_page=True)
        page.click("#sessions tbody a, #sessions tr:nth-child(2) a")
        page.wait_for_selector("#timeline .main-svg")
        sid = page.url.rsplit("/", 1)[1]
        detail = httpx.get(f"{server}/api/v1/sessions/{sid}", headers=auth).json()
        assert page.locator("#session-tree li.step").count() == detail["totals"]["requests"]
        page.screenshot(path=str(SHOTS / "session.png"), full_page=True)
        box = page.locator("#timeline g.point path").first.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_url(f"{server}/requests/*")
        assert page.url == f"{server}/requests/{detail['timeline'][0]['request_id']}"

        # prompts: register two versions in the form, then compare them side by side
        page.goto(f"{server}/prompts?range=30d")
        page.screenshot(path=str(SHOTS / "prompts.png"), full_page=True)
        page.fill("#new-prompt input[name=prompt_id]", "support-answer")  # not the Prompt filter above it
        page.fill("#new-prompt input[name=model]", "gpt-4o-mini")
        page.fill("#new-prompt textarea[name=system]", "You are a support agent for {{product}}.")
        page.fill("#new-prompt textarea[name=user]", "Answer {{customer}}: {{question}}")
        page.click("button:has-text('Register version 1')")
        page.wait_for_selector("#new-version")
        page.fill("#new-version textarea[name=system]", "You are a formal support agent for {{product}}.")
        page.click("button:has-text('Register the next version')")
        page.wait_for_selector("#compare-form")
        page.screenshot(path=str(SHOTS / "prompt.png"), full_page=True)
        page.select_option("#compare-form select[name=a]", "1")  # the demo's traffic also has a version 3
        page.select_option("#compare-form select[name=b]", "2")
        page.click("#compare-form button")
        page.wait_for_selector("#comparison")
        assert page.inner_text("#template-diff .del") == "-You are a support agent for {{product}}."
        assert page.inner_text("#template-diff .add") == "+You are a formal support agent for {{product}}."
        page.screenshot(path=str(SHOTS / "prompt-compare.png"), full_page=True)

        # an alert rule made in the form, evaluated, shown firing with its value
        page.goto(f"{server}/alerts")
        page.fill("#new-alert input[name=name]", "Spend over a dollar a month")
        page.select_option("select[name=metric]", "cost")
        page.fill("input[name=threshold]", "1")
        page.select_option("select[name=window]", "30d")
        page.fill("input[name=webhook_url]", "http://127.0.0.1:9/hook")
        page.click("button:has-text('Create rule')")
        page.wait_for_selector("#rule-state")
        assert page.inner_text("#rule-state") == "ok"
        services.alerts.evaluate_due()
        page.reload()
        month = httpx.get(f"{server}/api/v1/overview", headers=auth, params={"range": "30d"}).json()["kpis"]
        assert page.inner_text("#rule-state") == "firing"
        assert page.inner_text("#rule-value") == f"${float(month['cost_usd']):,.2f}"
        page.screenshot(path=str(SHOTS / "alert.png"), full_page=True)
        page.goto(f"{server}/alerts")
        page.screenshot(path=str(SHOTS / "alerts.png"), full_page=True)
        page.set_viewport_size({"width": 420, "height": 900})
        page.goto(f"{server}/?range=30d")
        page.screenshot(path=str(SHOTS / "overview-narrow.png"), full_page=True)
        browser.close()
