"""How a stream starts: its 200 and a chat's role chunk as soon as the worker takes the request in, and its charset."""

from __future__ import annotations

import json
import os
import signal

import pytest

from ..helpers import bounded, sse_events, worker_entry

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "stream": True}


async def _kill_wedged(admin) -> None:  # noqa: ANN001
    """The worker wedged on purpose reads no Shutdown: killed here, as the server's stop would after its wait."""
    os.kill((await worker_entry(admin))["pid"], signal.SIGKILL)


@pytest.mark.parametrize("server_settings", [{"hang_timeout": 30.0}])
@bounded(60)
async def test_the_role_chunk_goes_out_when_the_request_is_admitted_before_any_token(client, admin, monkeypatch):
    # The worker's first step never returns: no token can come, yet the request has been taken in.
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "step=hang@1")
    async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        line = await anext(lines)
        while not line:
            line = await anext(lines)
        chunk = json.loads(line.removeprefix("data: "))
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
    await _kill_wedged(admin)


@pytest.mark.parametrize("server_settings", [{"hang_timeout": 30.0, "stream_keepalive": 0.2}])
@bounded(60)
async def test_a_silent_stream_sends_keep_alive_comments_that_clients_skip(client, admin, monkeypatch):
    """A long prefill sends nothing for a while: proxies and clients that drop idle connections must see it alive."""
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "step=hang@1")
    async with client.stream("POST", "/v1/chat/completions", json=CHAT) as response:
        assert response.status_code == 200
        seen: list[str] = []
        async for line in response.aiter_lines():
            seen.append(line)
            if seen.count(": keep-alive") == 3:
                break
    # The role chunk first, then only comments (an SSE comment is not an event: readers skip it).
    events = [line for line in seen if line]
    assert events[0].startswith("data: ") and set(events[1:]) == {": keep-alive"}
    await _kill_wedged(admin)


@bounded(60)
async def test_a_request_refused_at_admission_is_still_an_error_response(client):
    # Refused by the worker (a token outside the vocabulary), not by the orchestrator's checks.
    response = await client.post("/v1/chat/completions", json={**CHAT, "logit_bias": {"999999": 5}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "logit_bias"


# The grammar makes the demo model write exactly this: non-ASCII text in the stream, whatever its weights.
WORDS = "naïve café, 東京 ✓"
ENUM = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"enum": [WORDS]}, "strict": True}}


@bounded(60)
async def test_an_event_stream_declares_utf8_and_decodes_by_it(client):
    response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 60, "response_format": ENUM})
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.replace(" ", "").lower() == "text/event-stream;charset=utf-8"
    # What a client that honours the header reads (HTTP/1.1's default for text/* is ISO-8859-1, as `requests` uses).
    text = response.content.decode(response.charset_encoding or "iso-8859-1")
    events = sse_events(text)
    content = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1] if event["choices"])
    assert json.loads(content) == WORDS
