"""surface_bench's chat-image: chat completions with an image each, read to the server's token count, on the
benchmark's Qwen2-VL scaled down (tests/bench/conftest.py), which mlxtrio serves as a vision model."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.sse_client import LeanClient
from bench.surface_bench import noise_image_url, one, request

from ..helpers import bounded
from .conftest import IMAGE_TOKENS_448


@pytest.fixture
def server_settings(small_qwen2_vl: Path) -> dict:
    return {"model": str(small_qwen2_vl)}


@bounded(120)
async def test_chat_image_is_read_to_the_servers_token_count(server, client: httpx.AsyncClient, small_qwen2_vl: Path) -> None:
    model = str(small_qwen2_vl)
    lean = LeanClient(timeout=60)
    try:
        measured = await one(lean, server.openai_url, "chat-image", model, "Say something.", 24, nonce=7, image=noise_image_url(7))
    finally:
        await lean.aclose()
    assert measured is not None, "chat-image: the request failed or sent no text"
    ttft, span, tokens = measured
    # The model never ends on its own: every reply runs to 24.
    assert tokens == 24
    assert ttft > 0 and span > 0
    # Served as a vision model: the image is its tokens in the prompt, the same text's beside it.
    usage = {}
    for surface in ("chat", "chat-image"):
        path, body = request(surface, model, "Say something.", 24, nonce=8, image=noise_image_url(8))
        body = {key: value for key, value in body.items() if key not in ("stream", "stream_options")}
        response = await client.post(path, json=body)
        assert response.status_code == 200, response.text
        usage[surface] = response.json()["usage"]
    assert usage["chat-image"]["completion_tokens"] == usage["chat"]["completion_tokens"] == 24
    # The image's tokens, and the vision start and end around them.
    assert usage["chat-image"]["prompt_tokens"] - usage["chat"]["prompt_tokens"] == IMAGE_TOKENS_448 + 2
