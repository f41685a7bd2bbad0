"""The web pages in a real browser: Debian's Chromium driven by Playwright, against real servers in their own processes.

The servers run as processes (``python -m mlxtrio serve``), not in the test's
Trio loop: Playwright's sync API blocks the thread it runs on, and the pages
must reach a server that keeps running meanwhile. One browser and two
servers serve the whole directory: an open one, and one that wants an API key
and an admin token.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from ..helpers import server_env

CHROMIUM = os.environ.get("MLXTRIO_CHROMIUM", "/usr/bin/chromium")
# Set to write docs/images/*.png from the tests that show each page at its fullest.
SCREENSHOTS = os.environ.get("MLXTRIO_SCREENSHOTS")
API_KEY = "sk-web-test-key"
ADMIN_TOKEN = "web-test-admin-token"
BROKEN = "broken"


class WebServer:
    """``python -m mlxtrio serve`` in its own process, its log read by a thread (a full pipe would stop it)."""

    def __init__(self, cache_dir: Path, home: Path, **env: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlxtrio", "serve"],
            env={**server_env(cache_dir, home), **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        started = threading.Event()
        urls: list[str] = []

        def read() -> None:
            for line in self.process.stderr:
                self.log.append(line)
                if not started.is_set() and (match := re.search(r"OpenAI API on (\S+), admin API on (\S+)", line)):
                    urls.extend(match.groups())
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(60) or not urls:
            self.stop()
            raise AssertionError("the server did not start:\n" + "".join(self.log))
        self.url, self.admin_url = urls
        self.admin_headers = {"Authorization": f"Bearer {env['MLX_ADMIN_TOKEN']}"} if "MLX_ADMIN_TOKEN" in env else {}

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, headers=self.admin_headers, timeout=60)

    def worker(self, model: str = "demo") -> dict:
        with self.admin() as admin:
            response = admin.get("/admin/status")
        assert response.status_code == 200, response.text
        return next(entry for entry in response.json()["workers"] if entry["model"] == model)

    def load(self, model: str = "demo") -> int:
        with self.admin() as admin:
            response = admin.post("/admin/load", json={"model": model})
        assert response.status_code == 200, response.text
        return response.json()["pid"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def open_server(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """Without a key or token; with a configured model, ``broken``, whose directory holds no model (its loads fail)."""
    home = tmp_path_factory.mktemp("web-open")
    (home / "not-a-model").mkdir()
    config = home / "mlxtrio.toml"
    config.write_text(f'[models]\n{BROKEN} = "{home / "not-a-model"}"\n')
    server = WebServer(cache_dir, home, MLX_CONFIG=str(config))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secured_server(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    server = WebServer(cache_dir, tmp_path_factory.mktemp("web-secured"), MLX_API_KEY=API_KEY, MLX_ADMIN_TOKEN=ADMIN_TOKEN)
    yield server
    server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own session storage); any script error or Content-Security-Policy violation fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            problems.append(message.text)

    tab.on("console", console)
    tab.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    yield tab
    context.close()
    assert not problems, problems


def enter_credential(page: Page, form_id: str, *, missing: str, right: str) -> None:
    """The page asks for its key or token (``missing`` says why), refuses a wrong one, takes the right one."""
    form = page.locator(f"#{form_id}")
    expect(form).to_be_visible()
    expect(form.locator(".why")).to_contain_text(missing)
    form.locator("input").fill("wrong")
    form.locator("button").click()
    expect(form.locator(".why")).to_contain_text("not valid")
    form.locator("input").fill(right)
    form.locator("button").click()
    expect(form).to_be_hidden()


def screenshot(page: Page, name: str) -> None:
    """The page as a user sees it, into docs/images/ (only with MLXTRIO_SCREENSHOTS set)."""
    if SCREENSHOTS:
        folder = Path(__file__).resolve().parents[2] / "docs" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
