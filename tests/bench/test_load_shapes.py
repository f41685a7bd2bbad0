"""What the GPU harnesses send and read: each API surface's stream counted to its tokens, long prompts
that no prompt cache serves, and the stall a newcomer causes read off the decoding streams' event times.

docs/PERFORMANCE.md's per-surface overhead, long-prompt and TTFT-under-load figures rest on these.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from bench.bench_models import build
from bench.load_ttft_bench import window_figures
from bench.serve_bench import long_prompts
from bench.sse_client import LeanClient
from bench.surface_bench import TEXT_SURFACES, one

from ..helpers import bounded


@pytest.mark.parametrize("surface", TEXT_SURFACES)
@bounded(60)
async def test_each_surface_is_read_to_the_servers_token_count(server, surface: str) -> None:
    client = LeanClient(timeout=30)
    try:
        measured = await one(client, server.openai_url, surface, "demo", "Say something.", 24, nonce=7)
    finally:
        await client.aclose()
    assert measured is not None, f"{surface}: the request failed or sent no text"
    ttft, span, tokens = measured
    # The demo model never ends on its own, and chat-json's schema outlasts max_tokens: every reply runs to 24.
    assert tokens == 24
    assert ttft > 0 and span > 0


@bounded(60)
async def test_long_prompts_are_as_long_as_asked_and_no_cache_serves_them(server, client: httpx.AsyncClient, tmp_path: Path) -> None:
    texts = long_prompts(str(build("demo", tmp_path / "demo")), 3, 300, "c8")
    assert len(set(texts)) == 3
    for text in texts:
        body = {"model": "demo", "messages": [{"role": "user", "content": text}], "max_tokens": 1, "temperature": 0}
        usage = (await client.post("/v1/chat/completions", json=body)).json()["usage"]
        assert 270 <= usage["prompt_tokens"] <= 310
        # Each its own from its first word: the cache holds no more than the opening (the chat template, "Request c8-").
        assert usage["prompt_tokens_details"]["cached_tokens"] <= 16
    # Another phase's prompts (another tag) are others again.
    assert not set(texts) & set(long_prompts(str(tmp_path / "demo"), 3, 300, "c32"))


def test_the_stall_is_the_longest_gap_across_the_arrival() -> None:
    # Two streams at 10 ms a token; from t=1.0 s one waits 300 ms, the other 200 ms; the newcomer's first token at 1.25 s.
    steady = [round(0.01 * step, 3) for step in range(101)]
    streams = [steady + [1.3, 1.31, 1.32], steady + [1.2, 1.21, 1.22]]
    figures = window_figures(streams, arrival=1.0, first=1.25)
    assert figures["steady_gap_p50_s"] == pytest.approx(0.01)
    assert figures["stall_median_stream_s"] == pytest.approx(0.25)
    assert figures["stall_max_s"] == pytest.approx(0.3)
    # A stream with no token in the window has no stall to show (its gaps before the arrival are steady decoding).
    assert math.isnan(window_figures([steady], arrival=1.0, first=1.25)["stall_max_s"])
