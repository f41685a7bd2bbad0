"""/v1/completions as OpenAI's spec has it: a string, strings, token ids or lists of them; echo; best_of; suffix refused."""

from __future__ import annotations

import openai
import pytest

from ..helpers import bounded, sse_events

# ignore_eos: these tests count tokens; temperature 0: a choice's text is its prompt's alone.
EXACT = {"ignore_eos": True}
GREEDY = {"model": "demo", "max_tokens": 4, "temperature": 0, "extra_body": EXACT}


def _sdk(server) -> openai.AsyncOpenAI:  # noqa: ANN001
    return openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="unused", max_retries=0)


async def _create(sdk: openai.AsyncOpenAI, openapi, **request: object):  # noqa: ANN001, ANN202
    """The SDK's completion, its JSON checked against OpenAI's schema."""
    raw = await sdk.completions.with_raw_response.create(**request)
    openapi.validate(raw.http_response.json(), "CreateCompletionResponse")
    return raw.parse()


@bounded(120)
async def test_a_list_of_prompts_gets_n_choices_each_indexed_as_openai_does(server, openapi):
    prompts = ["the cat sat", "a dog ran far away"]
    async with _sdk(server) as sdk:
        alone = [await _create(sdk, openapi, prompt=prompt, **GREEDY) for prompt in prompts]
        both = await _create(sdk, openapi, prompt=prompts, n=2, **GREEDY)
        # Choice index = prompt index * n + choice.
        assert [choice.index for choice in both.choices] == [0, 1, 2, 3]
        texts = {choice.index: choice.text for choice in both.choices}
        assert [texts[0], texts[1], texts[2], texts[3]] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
        # Usage over every prompt and choice.
        assert both.usage.prompt_tokens == sum(each.usage.prompt_tokens for each in alone)
        assert both.usage.completion_tokens == 4 * 4
        stream = await sdk.completions.create(prompt=prompts, n=2, stream=True, stream_options={"include_usage": True}, **GREEDY)
        streamed: dict[int, str] = {}
        finished, usage = [], None
        async for chunk in stream:
            for choice in chunk.choices:
                streamed[choice.index] = streamed.get(choice.index, "") + choice.text
                if choice.finish_reason:
                    finished.append(choice.index)
            usage = chunk.usage or usage
        assert streamed == texts and sorted(finished) == [0, 1, 2, 3]
        assert usage.prompt_tokens == both.usage.prompt_tokens and usage.completion_tokens == 16


@bounded(120)
async def test_token_id_prompts(server, openapi):
    async with _sdk(server) as sdk:
        one = await _create(sdk, openapi, prompt=[40, 41, 42], **GREEDY)
        assert one.usage.prompt_tokens == 3
        several = await _create(sdk, openapi, prompt=[[40, 41, 42], [43, 44]], **GREEDY)
        assert [choice.index for choice in several.choices] == [0, 1]
        assert several.choices[0].text == one.choices[0].text
        assert several.usage.prompt_tokens == 5
        # Echoed, token ids are their text.
        echoed = await _create(sdk, openapi, prompt=[40, 41, 42], echo=True, **GREEDY)
        assert echoed.choices[0].text.endswith(one.choices[0].text) and len(echoed.choices[0].text) > len(one.choices[0].text)
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                await sdk.completions.create(prompt=[[1, 2], [3, 1_000_000]], stream=stream, **GREEDY)
            assert refused.value.body["param"] == "prompt" and "vocabulary" in refused.value.body["message"]


@bounded(60)
async def test_malformed_prompts_are_400s_naming_prompt(client, openapi):
    for prompt in ([], [[]], [""], [1, "a"], [[1], 2], [True, 2], [-1], [2**40], [[1.5]], [["a"]], {"a": 1}, None):
        response = await client.post("/v1/completions", json={"model": "demo", "prompt": prompt, "max_tokens": 2})
        assert response.status_code == 400, (prompt, response.text)
        openapi.validate(response.json(), "ErrorResponse")
        assert response.json()["error"]["param"] == "prompt", (prompt, response.json())


@bounded(60)
async def test_prompts_times_n_respect_max_choices(client, openapi):
    response = await client.post("/v1/completions", json={"model": "demo", "prompt": ["a"] * 5, "n": 4, "max_tokens": 2})
    assert response.status_code == 400
    openapi.validate(response.json(), "ErrorResponse")
    assert "MLX_MAX_CHOICES" in response.json()["error"]["message"]
    fits = await client.post("/v1/completions", json={"model": "demo", "prompt": ["a"] * 4, "n": 4, "max_tokens": 2})
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 16


@bounded(120)
async def test_an_error_of_any_prompt_comes_before_the_stream(client, openapi):
    prompts = ["fine", "word " * 6000]
    for stream in (False, True):
        response = await client.post("/v1/completions", json={"model": "demo", "prompt": prompts, "max_tokens": 2, "stream": stream})
        assert response.status_code == 400, response.text[:300]
        openapi.validate(response.json(), "ErrorResponse")
        assert response.json()["error"]["code"] == "context_length_exceeded"


@bounded(120)
async def test_echo_returns_the_prompt_before_the_completion(server, client, openapi):
    prompt = "Once upon a time"
    async with _sdk(server) as sdk:
        plain = await _create(sdk, openapi, prompt=prompt, **GREEDY)
        echoed = await _create(sdk, openapi, prompt=[prompt, prompt], echo=True, **GREEDY)
        assert [choice.text for choice in echoed.choices] == [prompt + plain.choices[0].text] * 2
        stream = await sdk.completions.create(prompt=[prompt, "x"], echo=True, stream=True, **GREEDY)
        firsts: dict[int, str] = {}
        async for chunk in stream:
            for choice in chunk.choices:
                firsts.setdefault(choice.index, choice.text)
        # The prompt is each choice's first chunk.
        assert firsts == {0: prompt, 1: "x"}
    # With logprobs: the prompt's tokens too, the first with none (nothing predicts it).
    body = {"model": "demo", "prompt": prompt, "max_tokens": 3, "echo": True, "logprobs": 2, "temperature": 0, "ignore_eos": True}
    answer = (await client.post("/v1/completions", json=body)).json()
    logprobs = answer["choices"][0]["logprobs"]
    prompt_tokens = answer["usage"]["prompt_tokens"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == prompt_tokens + 3
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(value <= 0 for value in logprobs["token_logprobs"][1:])
    # The two most likely, and the token itself where it is not one of them (OpenAI's "up to logprobs+1").
    assert all(len(top) in (2, 3) and token in top for top, token in zip(logprobs["top_logprobs"][1:], logprobs["tokens"][1:], strict=True))
    assert logprobs["text_offset"][0] == 0 and logprobs["text_offset"][prompt_tokens] == len(prompt)
    # The spec's schema has no null entries, which OpenAI sends for the first echoed token: checked without it.
    openapi.validate({**answer, "choices": [{**answer["choices"][0], "logprobs": {key: value[1:] for key, value in logprobs.items()}}]}, "CreateCompletionResponse")
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        events = sse_events((await response.aread()).decode())
    first = events[0]["choices"][0]
    assert first["text"] == prompt and len(first["logprobs"]["tokens"]) == prompt_tokens


@bounded(120)
async def test_best_of_returns_the_candidates_with_the_highest_mean_logprob(server, client, openapi):
    sampled = {"model": "demo", "prompt": "the", "max_tokens": 6, "temperature": 1.0, "seed": 5, "ignore_eos": True}
    # The same seeds give the same candidates: choice i samples with seed + i.
    candidates = (await client.post("/v1/completions", json={**sampled, "n": 3, "logprobs": 0})).json()["choices"]
    means = {choice["text"]: sum(choice["logprobs"]["token_logprobs"]) / 6 for choice in candidates}
    response = await client.post("/v1/completions", json={**sampled, "best_of": 3})
    assert response.status_code == 200, response.text
    openapi.validate(response.json(), "CreateCompletionResponse")
    body = response.json()
    assert [choice["index"] for choice in body["choices"]] == [0]
    assert body["choices"][0]["text"] == max(means, key=means.get)
    assert body["choices"][0]["logprobs"] is None
    # Every candidate's tokens count, as OpenAI bills them.
    assert body["usage"]["completion_tokens"] == 18
    two = (await client.post("/v1/completions", json={**sampled, "best_of": 3, "n": 2, "prompt": ["a", "b"]})).json()
    assert [choice["index"] for choice in two["choices"]] == [0, 1, 2, 3]
    for fine in ({"best_of": 1}, {"best_of": 2, "n": 2}, {"best_of": 2, "n": 2, "stream": True}, {"best_of": None}):
        assert (await client.post("/v1/completions", json={**sampled, **fine})).status_code == 200, fine
    for refused in ({"best_of": 1, "n": 2}, {"best_of": 3, "stream": True}, {"best_of": 0}, {"best_of": 17}):
        response = await client.post("/v1/completions", json={**sampled, **refused})
        assert response.status_code == 400, refused
        openapi.validate(response.json(), "ErrorResponse")
        assert response.json()["error"]["param"] == "best_of", (refused, response.json())


@bounded(60)
async def test_suffix_is_refused_clearly(client, openapi):
    response = await client.post("/v1/completions", json={"model": "demo", "prompt": "x", "suffix": "end", "max_tokens": 2})
    assert response.status_code == 400
    openapi.validate(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == "suffix"
    for empty in (None, ""):
        fine = await client.post("/v1/completions", json={"model": "demo", "prompt": "x", "suffix": empty, "max_tokens": 2})
        assert fine.status_code == 200


@bounded(60)
async def test_echoed_log_probabilities_are_bounded(client, openapi):
    # About 4,000 prompt tokens x 16 choices x 6 entries: far past what one frame to the orchestrator may carry.
    body = {"model": "demo", "prompt": " the" * 4000, "max_tokens": 1, "echo": True, "logprobs": 5, "n": 16}
    for stream in (False, True):
        response = await client.post("/v1/completions", json={**body, "stream": stream})
        assert response.status_code == 400, response.text[:300]
        openapi.validate(response.json(), "ErrorResponse")
        error = response.json()["error"]
        assert error["param"] == "echo" and "at most 262144" in error["message"], error
    # Within it, the same prompt is answered.
    response = await client.post("/v1/completions", json={**body, "n": 1, "logprobs": 1})
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["choices"][0]["logprobs"]["tokens"]) == response.json()["usage"]["total_tokens"]
