"""The OpenAI API against the real server and a real worker: shapes, streaming, errors."""

from __future__ import annotations

import json

import h11
import openai
import pytest
import trio

from ..helpers import bounded, sse_events

# ignore_eos: the demo model samples its end token now and then; these tests count tokens.
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 12, "ignore_eos": True}


@bounded(120)
async def test_health_and_models(client, openapi):
    assert (await client.get("/health")).json() == {"status": "ok"}
    models = (await client.get("/v1/models")).json()
    openapi.validate(models, "ListModelsResponse")
    assert [model["id"] for model in models["data"]] == ["demo", "demo-vision", "demo-embed", "demo-embed-decoder"]
    assert "demo" in models["data"][0]["owned_by"]
    one = (await client.get("/v1/models/demo")).json()
    openapi.validate(one, "Model")
    missing = await client.get("/v1/models/nope")
    assert missing.status_code == 404
    openapi.validate(missing.json(), "ErrorResponse")


@bounded(120)
async def test_chat_completion(client, openapi):
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    body = response.json()
    openapi.validate(body, "CreateChatCompletionResponse")
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12


@bounded(120)
async def test_chat_completion_streams_chunks_then_done(client, openapi):
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events((await response.aread()).decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        openapi.validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishing = [chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["finish_reason"]]
    assert [chunk["choices"][0]["finish_reason"] for chunk in finishing] == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    assert len({chunk["id"] for chunk in chunks}) == 1


async def _http_chunks(url: str, path: str, request: dict) -> list[bytes]:
    """A streamed response's body as the HTTP chunks it came in (h11 marks where each ends)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = h11.Connection(h11.CLIENT)
    body = json.dumps(request).encode()
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        headers = [("Host", host), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        await stream.send_all(connection.send(h11.Request(method="POST", target=path, headers=headers)))
        await stream.send_all(connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage()))
        chunks, current = [], b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                current += event.data
                if event.chunk_end:
                    chunks.append(current)
                    current = b""
            elif isinstance(event, h11.EndOfMessage):
                return chunks


@bounded(120)
@pytest.mark.parametrize("include_usage", [True, False])
async def test_events_ready_together_leave_in_one_write(server, include_usage: bool):
    """The last token's chunk goes out with the usage chunk and [DONE]: each write costs the
    orchestrator CPU that a burst of requests waits for. The role chunk goes out alone, when the
    request is admitted (before its first token), and every other event is its own HTTP chunk,
    sent as soon as it is made."""
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": include_usage}}
    chunks = await _http_chunks(server.openai_url, "/v1/chat/completions", request)
    events = [sse_events(chunk.decode()) for chunk in chunks]
    first, last = events[0], events[-1]
    assert [event["choices"][0]["delta"] for event in first] == [{"role": "assistant", "content": ""}]
    assert events[1][0]["choices"][0]["delta"].get("content")
    assert last[-1] == "[DONE]"
    if include_usage:
        assert last[-2]["usage"]["completion_tokens"] == 12
    assert last[-2 - include_usage]["choices"][0]["finish_reason"] == "length"
    assert len(last) == 2 + include_usage
    assert all(len(middle) == 1 for middle in events[1:-1])


@bounded(120)
async def test_streamed_text_equals_non_streamed_text(client):
    request = {**CHAT, "temperature": 0, "max_tokens": 30}
    whole = (await client.post("/v1/chat/completions", json=request)).json()["choices"][0]["message"]["content"]
    async with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
        events = sse_events((await response.aread()).decode())
    streamed = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1])
    assert streamed == whole


@bounded(120)
async def test_completions(client, openapi):
    body = (await client.post("/v1/completions", json={"model": "demo", "prompt": "Once upon", "max_tokens": 8, "ignore_eos": True})).json()
    openapi.validate(body, "CreateCompletionResponse")
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 8
    request = {"model": "demo", "prompt": "Once upon", "max_tokens": 8, "stream": True, "ignore_eos": True}
    async with client.stream("POST", "/v1/completions", json=request) as response:
        events = sse_events((await response.aread()).decode())
    assert events[-1] == "[DONE]"
    *intermediate, last = events[:-1]
    openapi.validate(last, "CreateCompletionResponse")
    assert last["choices"][0]["finish_reason"] == "length"
    for chunk in intermediate:
        # The spec has no streaming schema for legacy completions, and its
        # finish_reason admits no null, which OpenAI itself streams until the
        # last chunk: check everything else strictly.
        assert chunk["choices"][0]["finish_reason"] is None
        chunk["choices"][0]["finish_reason"] = "length"
        openapi.validate(chunk, "CreateCompletionResponse")


@bounded(120)
async def test_seeded_sampling_is_reproducible(client):
    request = {**CHAT, "temperature": 1.0, "seed": 1234, "max_tokens": 20}
    first = (await client.post("/v1/chat/completions", json=request)).json()["choices"][0]["message"]["content"]
    second = (await client.post("/v1/chat/completions", json=request)).json()["choices"][0]["message"]["content"]
    other = (await client.post("/v1/chat/completions", json={**request, "seed": 99})).json()["choices"][0]["message"]["content"]
    assert first == second
    assert first != other


@bounded(120)
async def test_stop_string_ends_output_and_is_not_sent(client):
    request = {**CHAT, "temperature": 0, "max_tokens": 40}
    assert request["ignore_eos"]
    full = (await client.post("/v1/chat/completions", json=request)).json()["choices"][0]["message"]["content"]
    # A stop string taken from the middle of the greedy output, spanning tokens.
    stop = full[5:8]
    assert len(stop) == 3
    body = (await client.post("/v1/chat/completions", json={**request, "stop": [stop]})).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == full[: full.index(stop)]


@bounded(120)
async def test_official_openai_client(server):
    client = openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="unused", max_retries=0)
    try:
        exact = {"extra_body": {"ignore_eos": True}}
        chat = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=5, **exact
        )
        assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 5
        stream = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True, **exact
        )
        reasons = [chunk.choices[0].finish_reason async for chunk in stream if chunk.choices]
        assert reasons[-1] == "length"
        completion = await client.completions.create(model="demo", prompt="abc", max_tokens=3, **exact)
        assert completion.usage.completion_tokens == 3
        models = await client.models.list()
        assert "demo" in [model.id for model in models.data]
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()


BAD_BODIES = [
    (b"{", None),
    (b"[]", None),
    (b'"a string"', None),
    (b"{}", "model"),
    (b'{"model": "demo"}', "messages"),
    (b'{"model": "demo", "messages": []}', "messages"),
    (b'{"model": "demo", "messages": "hi"}', "messages"),
    (b'{"model": "demo", "messages": [{"content": "hi"}]}', "messages[0].role"),
    (b'{"model": "demo", "messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', "messages[0].content[0].image_url"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', "max_tokens"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}', "max_tokens"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}', None),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}', "temperature"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}', "top_p"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stop": ["a","b","c","d","e"]}', "stop"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "n": 0}', "n"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "n": 17}', "n"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "seed": 99999999999999999999999}', None),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 999999}', None),
    (b"\xff\xfe not utf-8", None),
    (b"[" * 10000 + b"]" * 10000, None),
    # Deep nesting inside an ignored field: msgspec recurses while skipping it.
    (b'{"model": "demo", "extra": ' + b"[" * 100000 + b"]" * 100000 + b"}", None),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "temperature"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}', "max_tokens"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}', "stop"),
    (b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "n": 1000}', "n"),
]


@bounded(120)
async def test_malformed_bodies_get_openai_shaped_400s(client, openapi):
    for body, param in BAD_BODIES:
        response = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (body[:80], response.status_code, response.text)
        payload = response.json()
        openapi.validate(payload, "ErrorResponse")
        assert payload["error"]["type"] == "invalid_request_error"
        if param is not None:
            assert payload["error"]["param"] == param, (body[:80], payload)
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


@bounded(60)
async def test_unknown_endpoint_and_method_are_openai_shaped(client, openapi):
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405)):
        response = await client.request(method, path)
        assert response.status_code == status
        openapi.validate(response.json(), "ErrorResponse")


@bounded(60)
async def test_model_ids_never_reach_the_filesystem(client, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    hostile = ["../../etc", "/etc/passwd", str(tmp_path / "model"), "..", "a/../../b", "file:///etc", "http://x/y", "~root", ""]
    for model in hostile:
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": model})
        assert response.status_code in (400, 404), (model, response.text)
        assert response.json()["error"]["message"]
    assert (await client.get("/health")).status_code == 200


@bounded(120)
async def test_concurrent_requests_each_get_their_own_output(client):
    prompts = [f"question number {index}: {'why ' * index}" for index in range(6)]

    async def alone(prompt: str) -> str:
        request = {"model": "demo", "prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
        return (await client.post("/v1/completions", json=request)).json()["choices"][0]["text"]

    expected = [await alone(prompt) for prompt in prompts]
    assert len(set(expected)) > 1  # distinct prompts, distinct outputs: cross-talk would show
    got: dict[int, str] = {}

    async def run(index: int) -> None:
        got[index] = await alone(prompts[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(prompts)):
            nursery.start_soon(run, index)
    assert [got[index] for index in range(len(prompts))] == expected



@bounded(120)
async def test_ignore_eos_generates_exactly_max_tokens(client):
    # Find a seeded request that reaches the end token by itself (the demo model
    # samples it now and then at a high temperature), then forbid that ending.
    for seed in range(40):
        request = {"model": "demo", "prompt": "x", "max_tokens": 300, "temperature": 2.0, "seed": seed}
        natural = (await client.post("/v1/completions", json=request)).json()
        if natural["choices"][0]["finish_reason"] == "stop":
            break
    else:
        pytest.fail("no seed reached the end token: the test needs another prompt")
    assert natural["usage"]["completion_tokens"] < 300
    forced = (await client.post("/v1/completions", json={**request, "ignore_eos": True})).json()
    assert forced["choices"][0]["finish_reason"] == "length" and forced["usage"]["completion_tokens"] == 300
    # The same tokens up to where the natural one ended.
    assert forced["choices"][0]["text"].startswith(natural["choices"][0]["text"])


@bounded(60)
async def test_health_is_503_and_requests_refused_while_shutting_down(server, client, openapi):
    # Flip the flag only (not the listeners), as the first moment of a graceful stop looks.
    server.state.shutting_down = True
    try:
        assert (await client.get("/health")).status_code == 503
        refused = await client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        openapi.validate(refused.json(), "ErrorResponse")
    finally:
        server.state.shutting_down = False


@bounded(60)
async def test_oversized_body_is_a_413(client, openapi):
    huge = b'{"model": "demo", "prompt": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    response = await client.post("/v1/completions", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    openapi.validate(response.json(), "ErrorResponse")
    assert (await client.get("/health")).status_code == 200


@bounded(120)
async def test_n_choices_streaming_and_not(client, openapi):
    request = {**CHAT, "n": 3, "temperature": 1.0, "seed": 11, "max_tokens": 10}
    body = (await client.post("/v1/chat/completions", json=request)).json()
    openapi.validate(body, "CreateChatCompletionResponse")
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    texts = [choice["message"]["content"] for choice in body["choices"]]
    assert len(set(texts)) == 3  # seed + index: different choices
    assert body["usage"]["completion_tokens"] == 30
    again = (await client.post("/v1/chat/completions", json=request)).json()
    assert [choice["message"]["content"] for choice in again["choices"]] == texts  # and reproducible
    async with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True, "stream_options": {"include_usage": True}}) as response:
        events = sse_events((await response.aread()).decode())
    assert events[-1] == "[DONE]"
    # Each choice's role chunk first (they leave together, with the first token's chunk).
    assert [(chunk["choices"][0]["index"], chunk["choices"][0]["delta"].get("role")) for chunk in events[:3]] == [
        (0, "assistant"), (1, "assistant"), (2, "assistant")
    ]
    streamed = ["", "", ""]
    finishes = []
    for chunk in events[:-1]:
        openapi.validate(chunk, "CreateChatCompletionStreamResponse")
        for choice in chunk["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content", "")
            if choice["finish_reason"]:
                finishes.append(choice["index"])
    assert streamed == texts and sorted(finishes) == [0, 1, 2]
    assert events[-2]["usage"]["completion_tokens"] == 30
    completions = (await client.post("/v1/completions", json={"model": "demo", "prompt": "a", "n": 2, "max_tokens": 4, "ignore_eos": True})).json()
    openapi.validate(completions, "CreateCompletionResponse")
    assert [choice["index"] for choice in completions["choices"]] == [0, 1]
    assert completions["usage"]["completion_tokens"] == 8


@bounded(120)
async def test_logprobs_chat_and_legacy_completions(client, openapi):
    request = {**CHAT, "temperature": 0, "max_tokens": 6, "logprobs": True, "top_logprobs": 3}
    body = (await client.post("/v1/chat/completions", json=request)).json()
    openapi.validate(body, "CreateChatCompletionResponse")
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 6
    for entry in content:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"], abs=1e-5)
        # The token's own bytes: its text where that is whole characters, U+FFFD where it holds part of one.
        assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]
    async with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
        events = sse_events((await response.aread()).decode())
    streamed = [entry for chunk in events[1:-1] for entry in chunk["choices"][0]["logprobs"]["content"]]
    for chunk in events[:-1]:
        openapi.validate(chunk, "CreateChatCompletionStreamResponse")
    assert [entry["token"] for entry in streamed] == [entry["token"] for entry in content]
    plain = (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})).json()
    assert plain["choices"][0]["logprobs"] is None
    legacy = (await client.post("/v1/completions", json={"model": "demo", "prompt": "x", "max_tokens": 5, "logprobs": 2, "ignore_eos": True, "temperature": 0})).json()
    openapi.validate(legacy, "CreateCompletionResponse")
    logprobs = legacy["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 5
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    # Offsets in characters of the text; a token holding part of a character (named "bytes:\\x..") is at that character.
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"]) and logprobs["text_offset"][-1] <= len(legacy["choices"][0]["text"])
    bad = await client.post("/v1/chat/completions", json={**CHAT, "top_logprobs": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"


@bounded(60)
async def test_null_is_accepted_wherever_openais_spec_makes_a_field_nullable(client, openapi):
    """``"n": null``, ``"stream": null``, ``"logprobs": null`` ... mean the default, as the OpenAPI file allows (issue 24)."""
    chat_nulls = dict.fromkeys(
        ["n", "stream", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens", "temperature", "top_p",
         "seed", "presence_penalty", "frequency_penalty", "logit_bias", "stop", "stream_options"]
    )
    answer = await client.post(
        "/v1/chat/completions",
        json={"model": "demo", "messages": [{"role": "user", "content": "hi"}], **chat_nulls, "max_tokens": 3},
    )
    assert answer.status_code == 200, answer.text
    openapi.validate(answer.json(), "CreateChatCompletionResponse")
    assert len(answer.json()["choices"]) == 1 and answer.json()["choices"][0]["logprobs"] is None
    completion_nulls = dict.fromkeys(
        ["n", "stream", "logprobs", "max_tokens", "temperature", "top_p", "seed", "presence_penalty",
         "frequency_penalty", "logit_bias", "stop", "stream_options"]
    )
    answer = await client.post("/v1/completions", json={"model": "demo", "prompt": "hi", **completion_nulls, "max_tokens": 3})
    assert answer.status_code == 200, answer.text
    openapi.validate(answer.json(), "CreateCompletionResponse")
    assert len(answer.json()["choices"]) == 1


@bounded(60)
async def test_routes_answer_without_the_v1_prefix_too(server):
    """Clients configured with a base URL without /v1 reach the same endpoints (issue 24, item 9)."""
    import openai

    root = server.openai_url.removesuffix("/v1").rstrip("/")
    async with openai.AsyncOpenAI(base_url=root, api_key="none") as sdk:
        chat = await sdk.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert chat.choices[0].message.role == "assistant"
        completion = await sdk.completions.create(model="demo", prompt="hi", max_tokens=3)
        assert completion.usage.completion_tokens == 3
        assert "demo" in [model.id async for model in sdk.models.list()]
        assert (await sdk.models.retrieve("demo")).id == "demo"
