"""The web pages' HTTP side: served open on both ports with a strict policy, while the APIs behind them keep every check."""

from __future__ import annotations

import pytest

from ..helpers import bounded

KEY = "web-pages-test-key"
TOKEN = "web-pages-test-admin-token"


@pytest.fixture
def server_settings() -> dict:
    return {"api_keys": (KEY,), "admin_token": TOKEN}


# What Chromium sends when it opens a page.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@bounded(60)
async def test_the_main_ports_root_is_the_page_for_a_browser_and_ollamas_answer_for_its_clients(client):
    """Ollama's clients probe / (with */*) before anything else; a browser names text/html."""
    for accept in ("*/*", "application/json", "text/html;q=0"):
        probe = await client.get("/", headers={"Accept": accept})
        assert probe.status_code == 200 and probe.text == "Ollama is running", accept
    page = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert page.headers["content-type"] == "text/html; charset=utf-8" and "/ui/playground/playground.js" in page.text


@bounded(60)
async def test_each_port_serves_its_page_and_files_without_a_key_and_nothing_else(client, admin):
    for http, page, other in ((client, "playground", "dashboard"), (admin, "dashboard", "playground")):
        index = await http.get("/", headers={"Accept": BROWSER_ACCEPT})
        assert index.status_code == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
        assert f"/ui/{page}/{page}.js" in index.text
        headers = index.headers
        assert headers["content-security-policy"].startswith("default-src 'self'; script-src 'self'; style-src 'self';")
        assert "frame-ancestors 'none'" in headers["content-security-policy"] and "unsafe" not in headers["content-security-policy"]
        assert (headers["x-content-type-options"], headers["referrer-policy"]) == ("nosniff", "no-referrer")
        script = await http.get(f"/ui/{page}/{page}.js")
        assert script.status_code == 200 and script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert (await http.get("/ui/vendor/purify.min.js")).status_code == 200
        # The other port's page, a licence file, a path out of the folder: not served; and the API still wants its key.
        for path in (f"/ui/{other}/index.html", "/ui/vendor/marked.LICENSE", "/ui/../_pages.py", "/ui/common/../../_pages.py", "/ui/%2e%2e/_pages.py"):
            assert (await http.get(path)).status_code in (401, 404), path
    assert (await client.get("/v1/models")).status_code == 401
    assert (await admin.get("/admin/status")).status_code == 401
    assert (await admin.get("/admin/status", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200


@bounded(60)
async def test_the_pages_keep_the_host_check(client, admin):
    for http in (client, admin):
        assert (await http.get("/", headers={"Host": "attacker.example"})).status_code == 421
