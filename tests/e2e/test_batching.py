"""Continuous batching and the sampling surface, on both engines (batched and sequential fallback)."""

from __future__ import annotations

import json

import pytest
import trio

from ..helpers import bounded

ENGINES = pytest.mark.parametrize(
    "server_settings", [{}, {"decode_concurrency": 1}], ids=["batched", "sequential"]
)


async def _text(client, **overrides) -> str:  # noqa: ANN001
    request = {"model": "demo", "prompt": "The sea is", "max_tokens": 24, "ignore_eos": True, **overrides}
    response = await client.post("/v1/completions", json=request)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


async def _concurrently(client, requests: list[dict]) -> list[str]:  # noqa: ANN001
    results: dict[int, str] = {}

    async def one(index: int) -> None:
        results[index] = await _text(client, **requests[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(requests)):
            nursery.start_soon(one, index)
    return [results[index] for index in range(len(requests))]


@ENGINES
@bounded(120)
async def test_seeded_request_gives_the_same_text_alone_and_in_a_batch(client):
    seeded = {"prompt": "Once upon a time", "temperature": 1.0, "seed": 4242}
    alone = await _text(client, **seeded)
    others = [{"prompt": f"noise {index} " * (index + 1), "temperature": 1.0} for index in range(5)]
    together = await _concurrently(client, [*others[:2], seeded, *others[2:]])
    assert together[2] == alone


@ENGINES
@bounded(120)
async def test_greedy_output_is_the_same_alone_and_in_a_batch(client, admin, server_settings):
    requests = [{"prompt": f"prompt number {index}: " + "why " * index, "temperature": 0} for index in range(8)]
    alone = [await _text(client, **request) for request in requests]
    assert len(set(alone)) > 1
    assert await _concurrently(client, requests) == alone
    engine = (await admin.get("/admin/status")).json()["workers"][0]["engine"]
    assert engine == ("sequential" if server_settings else "batched")


@bounded(120)
async def test_a_stream_decoded_alone_keeps_its_text_when_others_join_midway(client):
    """The first request on an idle worker is decoded alone (worker/_mlx_lm/_solo.py) and moves into the
    batch when the others arrive, here while it streams: through the real worker, nothing changes."""
    first = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 64, "ignore_eos": True, "temperature": 1.0, "seed": 99}
    alone = await _text(client, **first)
    pieces: list[str] = []
    others: list[str] = []
    async with trio.open_nursery() as nursery:
        async with client.stream("POST", "/v1/completions", json={**first, "stream": True}) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if not line.startswith("data: {"):
                    continue
                choice = json.loads(line[6:])["choices"][0]
                pieces.append(choice["text"])
                if len(pieces) == 3:
                    async def join(index: int) -> None:
                        others.append(await _text(client, prompt=f"joining {index}", temperature=0))

                    for index in range(3):
                        nursery.start_soon(join, index)
    assert "".join(pieces) == alone
    assert len(others) == 3


@ENGINES
@bounded(60)
async def test_logit_bias_forces_a_token(client):
    forced = await _text(client, temperature=0, max_tokens=12, logit_bias={"300": 100})
    piece = forced[: len(forced) // 12]
    assert piece and forced == piece * 12
    banned = await _text(client, temperature=0, max_tokens=12, logit_bias={"300": -100})
    assert piece not in banned


@ENGINES
@bounded(60)
async def test_top_k_one_is_greedy_and_penalties_change_the_text(client):
    greedy = await _text(client, temperature=0, max_tokens=40)
    assert await _text(client, temperature=1.0, top_k=1, max_tokens=40, seed=1) == greedy
    assert await _text(client, temperature=1.0, min_p=1.0, max_tokens=40, seed=2) == greedy
    assert await _text(client, temperature=0, max_tokens=40, repetition_penalty=5.0) != greedy
    assert await _text(client, temperature=0, max_tokens=40, frequency_penalty=2.0) != greedy


@bounded(60)
async def test_sampling_parameters_out_of_range_are_400s(client):
    bad = [
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
    ]
    for fields, param in bad:
        request = {"model": "demo", "prompt": "x", "max_tokens": 2, **fields}
        response = await client.post("/v1/completions", json=request)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, (fields, response.text)
    outside = await client.post("/v1/completions", json={"model": "demo", "prompt": "x", "logit_bias": {"999999": 5}})
    assert outside.status_code == 400 and "vocabulary" in outside.json()["error"]["message"]


@pytest.mark.parametrize("server_settings", [{"decode_concurrency": 1, "max_queue": 1}])
@bounded(120)
async def test_a_full_queue_answers_429_with_retry_after(client, admin, openapi):
    long = {"model": "demo", "prompt": "go", "max_tokens": 1000, "ignore_eos": True}
    assert (await admin.post("/admin/load", json={"model": "demo"})).status_code == 200
    finished: list[int] = []

    async def occupy() -> None:
        finished.append((await client.post("/v1/completions", json=long)).status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(occupy)
        nursery.start_soon(occupy)
        while (entry := (await admin.get("/admin/status")).json()["workers"][0])["active_requests"] < 2:
            await trio.sleep(0.01)
        assert entry["queued_requests"] == 1  # one decoding, one waiting
        refused = await client.post("/v1/completions", json=long)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        openapi.validate(refused.json(), "ErrorResponse")
        assert refused.json()["error"]["code"] == "queue_full"
    assert finished == [200, 200]  # those admitted were served


async def _chat(client, messages: list[dict], max_tokens: int = 16) -> dict:  # noqa: ANN001
    request = {"model": "demo", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    return response.json()


@ENGINES
@bounded(120)
async def test_prompt_cache_hits_are_reported_and_change_nothing(client, openapi):
    messages = [{"role": "system", "content": "You are a terse assistant. " * 20}, {"role": "user", "content": "Hello"}]
    first = await _chat(client, messages)
    openapi.validate(first, "CreateChatCompletionResponse")
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    again = await _chat(client, messages)
    # All but the last prompt token came from the cache, and the text is the same.
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == first["usage"]["prompt_tokens"] - 1
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    # The next turn of the conversation reuses the shared prefix.
    reply = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
    turn = await _chat(client, [*messages, reply, {"role": "user", "content": "And then?"}])
    assert turn["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1


@pytest.mark.parametrize("server_settings", [{"prompt_cache_bytes": 0}])
@bounded(60)
async def test_prompt_cache_can_be_turned_off(client):
    messages = [{"role": "user", "content": "Hello " * 30}]
    await _chat(client, messages)
    assert (await _chat(client, messages))["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


@bounded(120)
async def test_the_prompt_caches_memory_is_what_it_counts(client, admin):
    """Sequences that leave a batch together keep their caches in the prompt
    cache; once the worker settles them (after their last frame) they hold
    their own rows, not the batch's whole KV cache (tests/worker/test_prompt_cache.py)."""
    assert (await admin.post("/admin/load", json={"model": "demo"})).status_code == 200
    before = (await admin.get("/admin/health")).json()["workers"][0]
    async with trio.open_nursery() as nursery:
        for index in range(8):
            messages = [{"role": "user", "content": f"{index}: " + "remember these words " * (4 + index)}]
            nursery.start_soon(_chat, client, messages, 30 + 40 * index)
    after = (await admin.get("/admin/health")).json()["workers"][0]
    grown = after["active_memory_bytes"] - before["active_memory_bytes"]
    assert after["prompt_cache_bytes"] > 0
    assert grown <= after["prompt_cache_bytes"] * 1.02 + 64 * 1024, (grown, after["prompt_cache_bytes"])


CAP = 600_000


@pytest.mark.parametrize(
    "server_settings", [{"prompt_cache_bytes": CAP}, {"prompt_cache_bytes": CAP, "decode_concurrency": 1}], ids=["batched", "sequential"]
)
@bounded(120)
async def test_prompt_cache_stays_within_its_byte_cap(client, admin):
    sizes = []
    for index in range(12):
        await _chat(client, [{"role": "user", "content": f"{index} " + "distinct words " * (20 + index * 7)}], max_tokens=4)
        sizes.append((await admin.get("/admin/health")).json()["workers"][0]["prompt_cache_bytes"])
        # Never over the cap (an entry bigger than the cap on its own is not kept).
        assert 0 <= sizes[-1] <= CAP, sizes
    assert max(sizes) > 0, sizes
    # The prompts outgrew the cap: older entries were evicted to keep under it.
    assert any(later < earlier for earlier, later in zip(sizes, sizes[1:])), sizes
