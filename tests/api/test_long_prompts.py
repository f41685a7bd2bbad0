"""Long prompts and big bodies cost the server little, and other streams nothing (issue 22, item 12)."""

from __future__ import annotations

import json

import httpx
import trio

from ..helpers import bounded

# The demo's context is 4,096 tokens and its longest token 13 characters: 4 MiB cannot fit.
FAR_TOO_LONG = "many words of a prompt far too long " * 120_000


async def _stream_gaps(client: httpx.AsyncClient, gaps: list[float], started: trio.Event, stop: trio.Event) -> None:
    """Stream a long completion, noting the time between its chunks, until ``stop``."""
    request = {"model": "demo", "prompt": "x", "max_tokens": 3000, "ignore_eos": True, "temperature": 0, "stream": True}
    async with client.stream("POST", "/v1/completions", json=request) as response:
        assert response.status_code == 200
        last = None
        async for _ in response.aiter_bytes():
            now = trio.current_time()
            if last is not None:
                gaps.append(now - last)
            last = now
            started.set()
            if stop.is_set():
                return


@bounded(120)
async def test_a_prompt_far_over_the_context_is_refused_at_once_and_other_streams_go_on(client, openapi):
    """It took the worker 84 s to refuse 14.8 MiB with n=16, tokenizing it 16 times, and streams
    stalled up to 17 s. The length alone shows it cannot fit: refused before tokenizing, once."""
    gaps: list[float] = []
    started, stop = trio.Event(), trio.Event()
    bodies = [
        ("/v1/completions", {"model": "demo", "prompt": FAR_TOO_LONG, "n": 16, "max_tokens": 10}, "prompt"),
        ("/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": FAR_TOO_LONG}], "n": 16}, "messages"),
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stream_gaps, client, gaps, started, stop)
        await started.wait()
        during = len(gaps)
        for path, body, param in bodies:
            content = json.dumps(body).encode()
            began = trio.current_time()
            with trio.move_on_after(10):
                response = await client.post(path, content=content, headers={"content-type": "application/json"})
            took = trio.current_time() - began
            assert took < 1.0, f"{path}: {took:.1f} s for its 400"
            assert response.status_code == 400, response.text[:300]
            openapi.validate(response.json(), "ErrorResponse")
            error = response.json()["error"]
            assert (error["param"], error["code"]) == (param, "context_length_exceeded"), error
        stop.set()
    assert max(gaps[during:], default=0) < 0.5, max(gaps[during:])


@bounded(60)
async def test_a_chunked_body_past_the_limit_is_a_413(client, openapi):
    """Without a Content-Length the body limit holds as the body arrives (MLX_MAX_BODY_BYTES, 16 MiB)."""

    async def chunks():  # noqa: ANN202
        yield b'{"model": "demo", "prompt": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = await client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "content-length" not in response.request.headers
    openapi.validate(response.json(), "ErrorResponse")
    assert (await client.get("/health")).status_code == 200
    fine = await client.post("/v1/completions", json={"model": "demo", "prompt": "x", "max_tokens": 2})
    assert fine.status_code == 200


@bounded(60)
async def test_a_count_far_over_the_context_is_a_400_at_once_in_each_surfaces_shape(client, openapi):
    """A count may exceed the context, not without bound: tokenizing 4 MiB would take the worker's one thread for seconds."""
    messages = [{"role": "user", "content": FAR_TOO_LONG}]
    # The model loaded, so that what is timed is the refusals alone.
    assert (await client.post("/v1/messages/count_tokens", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})).status_code == 200
    began = trio.current_time()
    counted = await client.post("/v1/messages/count_tokens", json={"model": "demo", "messages": messages})
    assert counted.status_code == 400, counted.text[:300]
    error = counted.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
    assert "at most 65536 tokens (the more of 65536 and 2 times this model's maximum context length of 4096 tokens)" in error["error"]["message"], error
    counted = await client.post("/v1/responses/input_tokens", json={"model": "demo", "input": messages})
    assert counted.status_code == 400, counted.text[:300]
    openapi.validate(counted.json(), "ErrorResponse")
    assert counted.json()["error"]["code"] == "context_length_exceeded"
    assert trio.current_time() - began < 1.0
