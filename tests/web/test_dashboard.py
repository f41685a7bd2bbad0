"""The dashboard (the admin port's ``/``) in Chromium: the models as the admin API has them, steered by its buttons."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from .conftest import ADMIN_TOKEN, BROKEN, WebServer, enter_credential, screenshot


def _row(page: Page, model: str = "demo"):
    return page.locator(f"#models tr[data-model='{model}']")


def test_the_loaded_model_is_shown_with_its_worker_and_charts_of_its_metrics(page: Page, open_server: WebServer):
    pid = open_server.load()
    response = page.goto(open_server.admin_url + "/")
    assert response is not None and "default-src 'self'" in response.headers["content-security-policy"]
    row = _row(page)
    expect(row.locator("td.state")).to_have_text("ready")
    expect(row.locator("td.pid")).to_have_text(str(pid))
    expect(row.locator("td.unload-at")).to_contain_text("in ")
    expect(page.locator("#memory-text")).to_contain_text("used of a")
    expect(page.locator("#chart-tokens")).to_have_attribute("data-points", re.compile(r"[1-9]"))
    # Answers while the page watches: the charts draw their tokens per second and time to first token.
    chat = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "ignore_eos": True}
    with httpx.Client(base_url=open_server.url, timeout=60) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
    # One read of /metrics after them drew both (the next, with no new answers, draws 0 and no time).
    page.wait_for_function(
        """() => Number(document.querySelector('#chart-tokens').dataset.last) > 0
            && Number(document.querySelector('#chart-ttft').dataset.last) > 0"""
    )
    screenshot(page, "dashboard")


def test_unload_and_load_through_the_buttons_change_the_state_shown(page: Page, open_server: WebServer):
    open_server.load()
    page.goto(open_server.admin_url + "/")
    row = _row(page)
    expect(row.locator("td.state")).to_have_text("ready")
    row.locator("button.unload").click()
    expect(row.locator("td.state")).to_have_text("unloaded")
    expect(row.locator("td.pid")).to_have_text("—")
    assert open_server.worker()["state"] == "unloaded"
    row.locator("button.load").click()
    expect(row.locator("td.state")).to_have_text("ready")
    pid = open_server.worker()["pid"]
    expect(row.locator("td.pid")).to_have_text(str(pid))


def test_a_configured_model_that_fails_to_load_shows_why_and_when_it_is_tried_again(page: Page, open_server: WebServer):
    page.goto(open_server.admin_url + "/")
    # Listed from the config file before anything asked for it.
    row = _row(page, BROKEN)
    expect(row.locator("td.state")).to_contain_text(re.compile("unloaded|failed"))
    row.locator("button.load").click()
    expect(row.locator("td.state")).to_contain_text("failed")
    expect(row.locator(".failure")).to_contain_text("no config.json")
    expect(row.locator(".retry")).to_contain_text(re.compile(r"next attempt in \d+ s"))
    expect(page.locator("#problem")).to_contain_text(f"503: cannot load model '{BROKEN}'")


def test_the_admin_token_is_asked_for_and_required(page: Page, secured_server: WebServer):
    # The page itself is open; what it shows comes from the admin API, which wants the token.
    assert httpx.get(secured_server.admin_url + "/admin/status").status_code == 401
    page.goto(secured_server.admin_url + "/")
    expect(page.locator("#token-form")).to_be_visible()
    assert _row(page).count() == 0
    enter_credential(page, "token-form", missing="no admin token", right=ADMIN_TOKEN)
    expect(_row(page).locator("td.state")).to_have_text("unloaded")
    assert page.evaluate("sessionStorage.getItem('mlxtrio.adminToken')") == ADMIN_TOKEN
