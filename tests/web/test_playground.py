"""The playground (the main port's ``/``) in Chromium: a chat, streamed, stopped, failed, with a key, and safe."""

from __future__ import annotations

import json
import os
import re
import signal

import httpx
from PIL import Image
from playwright.sync_api import Page, expect

from .conftest import API_KEY, BROKEN, WebServer, enter_credential, screenshot

# Long enough to be still generating when the test acts on it (the demo writes a few hundred tokens a second).
LONG = '{"ignore_eos": true}'

# Collects every text the answer shows while it streams, for the test to read afterwards.
RECORD_PIECES = """() => {
  window.pieces = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('.turn.assistant .content');
    if (answers.length) window.pieces.push(answers[answers.length - 1].textContent);
  }).observe(document.querySelector('#conversation'), {childList: true, subtree: true, characterData: true});
}"""


def _open(page: Page, server: WebServer) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#model option[value='demo']")).to_be_attached()


def _settings(page: Page, **fields: str) -> None:
    if page.locator("#settings").is_hidden():
        page.click("#toggle-settings")
    for field, value in fields.items():
        page.fill(f"#{field}", value)


def _send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _letters(text: str) -> str:
    return "".join(character for character in text if character.isalnum())


def _stat(page: Page, turn: int, name: str) -> str:
    stat = page.locator(".turn.assistant").nth(turn).locator(".stat", has=page.locator(f"b:text-is('{name}')"))
    return stat.inner_text()[len(name) :].strip()


def test_the_page_loads_with_a_strict_policy_and_lists_the_models(page: Page, open_server: WebServer):
    response = page.goto(open_server.url + "/")
    assert response is not None and response.status == 200
    headers = response.headers
    policy = headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "object-src 'none'"):
        assert directive in policy
    assert "unsafe" not in policy
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    expect(page.locator("#model option[value='demo']")).to_be_attached()
    # Vendored files only: nothing of the package's own folder beyond what the pages use.
    assert httpx.get(open_server.url + "/ui/vendor/marked.LICENSE").status_code == 404


def test_an_answer_streams_in_pieces_and_a_second_turn_continues_the_conversation(page: Page, open_server: WebServer):
    _open(page, open_server)
    _settings(page, **{"max-tokens": "400", "seed": "7", "extra": LONG})
    page.evaluate(RECORD_PIECES)
    # Shift+Enter is a new line; Enter sends.
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    page.type("#prompt", "second line")
    page.press("#prompt", "Enter")
    user = page.locator(".turn.user").first
    expect(user.locator(".content")).to_have_text("first line\nsecond line")
    expect(page.locator(".turn.assistant .stats").first).to_contain_text("finish length")
    final = _letters(page.locator(".turn.assistant .content").first.text_content())
    pieces = [piece for piece in dict.fromkeys(map(_letters, page.evaluate("window.pieces"))) if piece]
    # Shown as it came: several texts, each a beginning of the answer, before the whole of it (compared by
    # their letters and digits: Markdown may read a piece's last marks otherwise once more text follows).
    assert len(pieces) >= 3, pieces
    assert all(final.startswith(piece) for piece in pieces) and len(pieces[0]) < len(final)
    first_prompt = int(_stat(page, 0, "prompt tokens"))
    assert int(_stat(page, 0, "completion tokens")) == 400
    assert float(_stat(page, 0, "tokens/s")) > 0 and _stat(page, 0, "TTFT").endswith("ms")

    _settings(page, **{"max-tokens": "5"})
    _send(page, "and then?")
    expect(page.locator(".turn.assistant .stats").nth(1)).to_contain_text("finish length")
    # The second request carried the first turn: its prompt holds the first prompt and answer, and reused their cache.
    assert int(_stat(page, 1, "prompt tokens")) > first_prompt + 400
    assert int(_stat(page, 1, "cached tokens")) >= first_prompt
    page.click("#toggle-settings")
    screenshot(page, "playground")

    page.click("#new-chat")
    expect(page.locator(".turn")).to_have_count(0)
    _send(page, "hello again")
    expect(page.locator(".turn.assistant .stats").first).to_contain_text("finish length")
    assert int(_stat(page, 0, "prompt tokens")) < first_prompt + 400


def test_stop_cancels_the_answer_on_the_server(page: Page, browser, open_server: WebServer):
    _open(page, open_server)
    _settings(page, **{"max-tokens": "3000", "extra": LONG})
    _send(page, "go on and on")
    answer = page.locator(".turn.assistant .content").first
    expect(answer).not_to_be_empty()
    page.click("#stop-button")
    expect(page.locator(".turn.assistant .stats").first).to_contain_text("finish stopped")
    expect(page.locator("#send")).to_be_enabled()

    # The server saw the client leave (a 499) and stopped generating: its request ended long before 3000 tokens.
    metrics = browser.new_page()
    try:
        metrics.goto(open_server.admin_url + "/")
        metrics.wait_for_function(
            """async () => (await (await fetch('/metrics')).text()).split('\\n').some(
                line => line.startsWith('mlxtrio_requests_total') && line.includes('/v1/chat/completions') && line.includes('status="499"'))""",
            polling=100,
        )
        expect(metrics.locator("tr[data-model='demo'] td.active")).to_have_text("0")
    finally:
        metrics.close()
    text = httpx.get(open_server.admin_url + "/metrics").text
    generated = float(re.search(r'^mlxtrio_completion_tokens_total\{model="demo"\} (\S+)', text, re.M).group(1))
    # Earlier tests in this module generated a few hundred; this one's answer, stopped, far less than its 3000.
    assert generated < 2000


def test_a_worker_killed_mid_answer_is_shown_as_an_error_with_a_retry(page: Page, open_server: WebServer):
    _open(page, open_server)
    _settings(page, **{"max-tokens": "3000", "extra": LONG})
    _send(page, "a long answer please")
    expect(page.locator(".turn.assistant .content").first).not_to_be_empty()
    os.kill(open_server.worker()["pid"], signal.SIGKILL)
    error = page.locator(".turn.assistant .error")
    expect(error).to_contain_text("worker")
    expect(error).to_contain_text("SIGKILL")
    expect(page.locator("#send")).to_be_enabled()
    # Retry sends the same conversation again, to a fresh worker.
    _settings(page, **{"max-tokens": "3"})
    error.locator("button.retry").click()
    expect(page.locator(".turn.assistant .stats").first).to_contain_text("finish length")
    expect(page.locator(".turn.user")).to_have_count(1)


def test_an_error_is_shown_plainly_with_its_retry_time(page: Page, open_server: WebServer):
    _open(page, open_server)
    page.select_option("#model", BROKEN)
    _send(page, "hi")
    error = page.locator(".turn.assistant .error")
    expect(error).to_contain_text(f"503: cannot load model '{BROKEN}'")
    expect(error).to_contain_text("no config.json")
    expect(error).to_contain_text(re.compile(r"retry in \d+ s"))
    expect(error.locator("button.retry")).to_be_visible()


def test_html_the_model_writes_is_shown_as_text(page: Page, open_server: WebServer):
    attack = "<script>window.pwned = 1</script><img src=x onerror=window.pwned=2> **bold**"
    _open(page, open_server)
    # A schema whose only value is this string: the model must write it.
    _settings(page, **{"max-tokens": "200", "schema": json.dumps({"const": attack})})
    _send(page, "say it")
    expect(page.locator(".turn.assistant .stats").first).to_contain_text("finish stop")
    answer = page.locator(".turn.assistant .content").first
    expect(answer).to_contain_text("<script>window.pwned = 1</script><img src=x onerror=window.pwned=2>")
    # Markdown still renders; the model's HTML made no element and ran nothing.
    expect(answer.locator("strong")).to_have_text("bold")
    assert answer.locator("script, img").count() == 0
    assert page.evaluate("window.pwned") is None


def test_the_page_asks_for_the_key_and_keeps_it_in_session_storage_only(page: Page, secured_server: WebServer):
    page.goto(secured_server.url + "/")
    enter_credential(page, "key-form", missing="no API key", right=API_KEY)
    expect(page.locator("#model option[value='demo']")).to_be_attached()
    assert page.evaluate("sessionStorage.getItem('mlxtrio.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    _settings(page, **{"max-tokens": "3"})
    _send(page, "hi")
    expect(page.locator(".turn.assistant .stats").first).to_contain_text(re.compile("finish (stop|length)"))


def test_an_attached_image_reaches_a_vision_model(page: Page, open_server: WebServer, tmp_path):
    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    _open(page, open_server)
    page.select_option("#model", "demo-vision")
    _settings(page, **{"max-tokens": "3", "temperature": "0"})
    page.set_input_files("#image", str(picture))
    expect(page.locator("#attachment-preview")).to_be_visible()
    _send(page, "what is this?")
    expect(page.locator(".turn.user img.thumb")).to_be_visible()
    expect(page.locator("#attachment")).to_be_hidden()
    expect(page.locator(".turn.assistant .stats").first).to_contain_text("finish length")
    with_image = int(_stat(page, 0, "prompt tokens"))
    page.click("#new-chat")
    _send(page, "what is this?")
    expect(page.locator(".turn.assistant .stats").first).to_contain_text("finish length")
    # The image's tokens (16 for the demo's 56 x 56 pixels) were in the first prompt.
    assert with_image - int(_stat(page, 0, "prompt tokens")) >= 16
