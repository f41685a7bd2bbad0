"""llama.cpp's server tests, ported to target a running OpenAI-compatible server.

Origin: https://github.com/ggml-org/llama.cpp, ``tools/server/tests/unit/`` (MIT licence, Copyright (c) 2023-2025
The ggml authors); files read at the commits listed in ``README.md``. The tests are re-written here, not copied:
each keeps its origin's request and the behaviour it checks, asserted through OpenAI's API (``/v1/...``, the
``openai`` client) instead of llama.cpp's native endpoints, and without assertions on what a particular model says
(the demo model's weights are random). Each test names the test it comes from; ``README.md`` lists what was left
out and why.
"""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from ._wire import OVER_CONTEXT, SYSTEM_USER, assert_count_matches_finish, error_of, stream

# --- test_basic.py -------------------------------------------------------------------------------------------


def test_server_start_simple(http: httpx.Client):
    response = http.get("/health")
    assert response.status_code == 200


def test_server_models(client: openai.OpenAI, model: str):
    models = client.models.list()
    assert models.object == "list"
    assert model in [entry.id for entry in models.data]
    assert all(entry.object == "model" for entry in models.data)


# --- test_chat_completion.py ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_content",
    ["What is the best book", [{"type": "text", "text": "What is"}, {"type": "text", "text": "the best book"}]],
    ids=["string", "parts"],
)
def test_chat_completion(http: httpx.Client, model: str, user_content):
    response = http.post(
        "/v1/chat/completions",
        json={"model": model, "max_tokens": 8, "messages": [{"role": "system", "content": "Book"}, {"role": "user", "content": user_content}]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert isinstance(body["id"], str) and body["id"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert_count_matches_finish(choice["finish_reason"], body["usage"]["completion_tokens"], 8)


def test_chat_completion_stream(http: httpx.Client, model: str):
    events = stream(
        http,
        "/v1/chat/completions",
        {"model": model, "max_tokens": 8, "messages": SYSTEM_USER, "stream_options": {"include_usage": True}},
    )
    *chunks, usage = events
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in chunk["choices"][0]["delta"] for chunk in chunks[1:])
    assert len({chunk["id"] for chunk in events}) == 1
    assert {chunk["model"] for chunk in events} == {model}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in events)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert usage["choices"] == []
    assert_count_matches_finish(chunks[-1]["choices"][0]["finish_reason"], usage["usage"]["completion_tokens"], 8)
    assert usage["usage"]["prompt_tokens"] > 0


def test_chat_completion_with_openai_library(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(model=model, messages=SYSTEM_USER, max_tokens=8, seed=42, temperature=0.8)
    assert answer.choices[0].message.content is not None
    assert_count_matches_finish(answer.choices[0].finish_reason, answer.usage.completion_tokens, 8)


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "const", "schema": {"const": "42"}}},
        {"type": "json_schema", "json_schema": {"name": "const", "schema": {"const": "foooooo"}}},
        {"type": "json_schema", "json_schema": {"name": "items", "schema": {"type": "array", "items": {"type": "integer", "maximum": 9, "minimum": 0}, "maxItems": 3}}},
    ],
    ids=["const-42", "const-foooooo", "small-array"],
)
def test_completion_with_response_format(client: openai.OpenAI, model: str, response_format: dict):
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "You are a coding assistant."}, {"role": "user", "content": "Write an example"}],
        max_tokens=40,
        response_format=response_format,
        seed=1,
    )
    assert answer.choices[0].finish_reason == "stop"
    schema = response_format["json_schema"]["schema"]
    value = json.loads(answer.choices[0].message.content)
    if "const" in schema:
        assert value == schema["const"]
    else:
        assert isinstance(value, list) and len(value) <= 3 and all(isinstance(item, int) and 0 <= item <= 9 for item in value)


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "sound"},
        {"type": "json_schema", "json_schema": {"name": "bad", "schema": 123}},
        {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": 123}}},
        {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "hiccup"}}},
    ],
    ids=["unknown-type", "schema-not-object", "type-not-string", "unknown-json-type"],
)
def test_completion_with_invalid_response_format(http: httpx.Client, model: str, response_format: dict):
    response = http.post(
        "/v1/chat/completions",
        json={"model": model, "max_tokens": 4, "messages": SYSTEM_USER, "response_format": response_format},
    )
    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith("response_format")


@pytest.mark.parametrize(
    "messages",
    [
        None,
        "string",
        [123],
        [{}],
        [{"role": 123}],
        [{"role": "system", "content": 123}],
        [{"role": "system", "content": "test"}, {}],
    ],
    ids=["none", "string", "number", "empty-object", "role-number", "content-number", "second-empty"],
)
def test_invalid_chat_completion_req(http: httpx.Client, model: str, messages):
    response = http.post("/v1/chat/completions", json={"model": model, "max_tokens": 4, "messages": messages})
    error = error_of(response, 400)
    assert error["param"] is not None and error["param"].startswith("messages")


def test_chat_completion_with_timings_per_token(http: httpx.Client, model: str):
    # Without llama.cpp's "timings" extension: the usage chunk is the only one without choices.
    events = stream(
        http,
        "/v1/chat/completions",
        {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "test"}], "stream_options": {"include_usage": True}},
    )
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    without_choices = [event for event in events if not event["choices"]]
    assert without_choices == [events[-1]]
    assert events[-1]["usage"]["completion_tokens"] <= 10
    # OpenAI's spec: with include_usage, every other chunk carries "usage": null.
    assert all("usage" in event and event["usage"] is None for event in events[:-1])


def test_logprobs(client: openai.OpenAI, model: str):
    answer = client.chat.completions.create(
        model=model, temperature=0.0, messages=SYSTEM_USER, max_tokens=5, logprobs=True, top_logprobs=10
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for token in content:
        assert token.logprob <= 0.0
        assert token.bytes is not None
        assert len(token.top_logprobs) == 10
    assert b"".join(bytes(token.bytes) for token in content).decode() == answer.choices[0].message.content


def test_logprobs_stream(client: openai.OpenAI, model: str):
    chunks = list(
        client.chat.completions.create(
            model=model, temperature=0.0, messages=SYSTEM_USER, max_tokens=5, logprobs=True, top_logprobs=10, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text, tokens = "", b""
    for chunk in chunks[1:]:
        choice = chunk.choices[0]
        assert choice.delta.role is None
        text += choice.delta.content or ""
        if choice.logprobs is not None:
            for token in choice.logprobs.content:
                tokens += bytes(token.bytes)
                assert token.logprob <= 0.0
                assert len(token.top_logprobs) == 10
    assert text and tokens.decode() == text


def test_logit_bias(client: openai.OpenAI, model: str):
    # llama.cpp learns token ids from /tokenize; here the ids come from a +100 bias, which forces the token.
    forced = client.chat.completions.create(
        model=model, messages=SYSTEM_USER, max_tokens=6, logit_bias={"300": 100}, logprobs=True, seed=3
    )
    tokens = {token.token for token in forced.choices[0].logprobs.content}
    assert len(tokens) == 1
    (token,) = tokens
    banned = client.chat.completions.create(
        model=model, messages=SYSTEM_USER, max_tokens=32, temperature=0.0, logit_bias={"300": -100}, logprobs=True
    )
    assert token not in [entry.token for entry in banned.choices[0].logprobs.content]


def test_context_size_exceeded(http: httpx.Client, model: str):
    response = http.post(
        "/v1/chat/completions",
        json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": OVER_CONTEXT}]},
    )
    error = error_of(response, 400)
    assert error["code"] == "context_length_exceeded"


def test_context_size_exceeded_stream(client: openai.OpenAI, model: str):
    with pytest.raises(openai.BadRequestError) as raised:
        for _ in client.chat.completions.create(
            model=model, max_tokens=4, messages=[{"role": "user", "content": OVER_CONTEXT}], stream=True
        ):
            pass
    assert raised.value.code == "context_length_exceeded"


def test_chat_completions_multiple_choices(http: httpx.Client, model: str):
    response = http.post("/v1/chat/completions", json={"model": model, "max_tokens": 8, "n": 2, "messages": SYSTEM_USER})
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [choice["index"] for choice in choices] == [0, 1]
    for choice in choices:
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] in ("stop", "length")


# --- test_completion.py ---------------------------------------------------------------------------------------

PROMPT = "I believe the meaning of life is"


def test_completion_stream_vs_non_stream(client: openai.OpenAI, http: httpx.Client, model: str):
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0}
    streamed = "".join(event["choices"][0]["text"] for event in stream(http, "/v1/completions", body) if event["choices"])
    assert streamed == client.completions.create(**body).choices[0].text


def test_completion_with_openai_library(client: openai.OpenAI, model: str):
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=8)
    assert answer.object == "text_completion"
    assert isinstance(answer.choices[0].text, str)
    assert_count_matches_finish(answer.choices[0].finish_reason, answer.usage.completion_tokens, 8)


def test_completion_stream_with_openai_library(client: openai.OpenAI, model: str):
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=8, stream=True))
    assert all(chunk.object == "text_completion" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    finished = [chunk for chunk in chunks if chunk.choices[0].finish_reason is not None]
    assert finished == [chunks[-1]]
    assert all(chunk.choices[0].text for chunk in chunks[:-1])


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_completion_stream_with_openai_library_stops(client: openai.OpenAI, http: httpx.Client, model: str, streamed: bool):
    # The origin relies on what a real model says; here the stop string is cut from the model's own greedy text.
    body = {"model": model, "prompt": PROMPT, "max_tokens": 24, "temperature": 0.0}
    text = client.completions.create(**body, extra_body={"ignore_eos": True}).choices[0].text
    assert len(text) >= 8, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if streamed:
        events = stream(http, "/v1/completions", {**body, "ignore_eos": True, "stop": [stop, "never-said"]})
        output = "".join(event["choices"][0]["text"] for event in events)
        finish_reason = events[-1]["choices"][0]["finish_reason"]
    else:
        choice = client.completions.create(**body, stop=[stop, "never-said"], extra_body={"ignore_eos": True}).choices[0]
        output, finish_reason = choice.text, choice.finish_reason
    assert output == text[: text.index(stop)]
    assert finish_reason == "stop"


def test_consistent_result_same_seed(client: openai.OpenAI, model: str):
    texts = {
        client.completions.create(model=model, prompt=PROMPT, seed=42, temperature=1.0, max_tokens=12).choices[0].text
        for _ in range(3)
    }
    assert len(texts) == 1


def test_different_result_different_seed(client: openai.OpenAI, model: str):
    texts = [
        client.completions.create(model=model, prompt=PROMPT, seed=seed, temperature=1.0, max_tokens=12).choices[0].text
        for seed in range(4)
    ]
    assert all(first != second for first, second in zip(texts, texts[1:]))


def test_nocache_long_input_prompt(http: httpx.Client, model: str):
    response = http.post("/v1/completions", json={"model": model, "prompt": OVER_CONTEXT, "max_tokens": 4, "seed": 42})
    error = error_of(response, 400)
    assert error["code"] == "context_length_exceeded"


def test_completion_with_tokens_input(http: httpx.Client, model: str):
    tokens = list(range(40, 48))
    single = http.post("/v1/completions", json={"model": model, "prompt": tokens, "max_tokens": 4, "temperature": 0.0})
    assert single.status_code == 200, single.text
    assert isinstance(single.json()["choices"][0]["text"], str)
    batch = http.post("/v1/completions", json={"model": model, "prompt": [tokens, tokens], "max_tokens": 4, "temperature": 0.0})
    assert batch.status_code == 200, batch.text
    choices = batch.json()["choices"]
    assert [choice["index"] for choice in choices] == [0, 1]
    assert choices[0]["text"] == choices[1]["text"]
    # llama.cpp also takes a list that mixes token ids and strings; OpenAI's four forms have no mixture.
    mixed = http.post("/v1/completions", json={"model": model, "prompt": [tokens, PROMPT], "max_tokens": 4, "temperature": 0.0})
    assert error_of(mixed, 400)["param"] == "prompt"


def test_completion_parallel_slots(base_url: str, model: str):
    # Without /slots: several requests at once all complete, each with its own text.
    prompts = ["Write a very long book.", "Write another a poem.", "What is LLM?", "The sky is blue and I love it."]
    results: dict[int, httpx.Response] = {}

    def send(index: int) -> None:
        results[index] = httpx.post(
            base_url + "/v1/completions",
            json={"model": model, "prompt": prompts[index], "seed": 42, "temperature": 1.0, "max_tokens": 16},
            timeout=60,
        )

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(len(prompts)):
        assert results[index].status_code == 200, results[index].text
        assert isinstance(results[index].json()["choices"][0]["text"], str)


def test_cancel_request(base_url: str, client: openai.OpenAI, model: str):
    # Without /slots: a client that gives up mid-generation leaves a server that still answers.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            base_url + "/v1/completions",
            json={"model": model, "prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True},
            timeout=httpx.Timeout(10, read=0.3),
        )
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=4)
    assert answer.choices[0].finish_reason in ("stop", "length")


# --- test_ctx_shift.py ----------------------------------------------------------------------------------------


def test_ctx_shift_disabled_stream(http: httpx.Client, model: str):
    events = stream(http, "/v1/completions", {"model": model, "prompt": "Once", "max_tokens": 16, "ignore_eos": True})
    *running, last = events
    assert all(event["choices"][0]["finish_reason"] is None for event in running)
    assert last["choices"][0]["finish_reason"] == "length"
    assert "".join(event["choices"][0]["text"] for event in events)


# --- test_tool_call.py ----------------------------------------------------------------------------------------

TEST_TOOL = {
    "type": "function",
    "function": {
        "name": "test",
        "description": "",
        "parameters": {"type": "object", "properties": {"success": {"type": "boolean", "const": True}}, "required": ["success"]},
    },
}
PYTHON_TOOL = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Runs code in an ipython interpreter and returns the result of the execution after 60 seconds.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The code to run in the ipython interpreter.", "maxLength": 20}},
            "required": ["code"],
        },
    },
}


def _one_message(http: httpx.Client, body: dict, streamed: bool) -> dict:
    """The first choice's message and finish_reason, from a whole answer or rebuilt from a stream."""
    if not streamed:
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        return {**choice["message"], "finish_reason": choice["finish_reason"]}
    message: dict = {"content": None, "tool_calls": None, "finish_reason": None}
    for event in stream(http, "/v1/chat/completions", body):
        for choice in event["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                message["content"] = (message["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or []:
                calls = message["tool_calls"] = message["tool_calls"] or []
                if call["index"] == len(calls):
                    calls.append({"id": call.get("id"), "type": call.get("type"), "function": {"name": "", "arguments": ""}})
                calls[call["index"]]["function"]["name"] += call["function"].get("name") or ""
                calls[call["index"]]["function"]["arguments"] += call["function"].get("arguments") or ""
            if choice["finish_reason"] is not None:
                message["finish_reason"] = choice["finish_reason"]
    return message


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("tool,argument_key", [(TEST_TOOL, "success"), (PYTHON_TOOL, "code")], ids=["test", "python"])
def test_completion_with_required_tool(http: httpx.Client, model: str, tool: dict, argument_key: str, streamed: bool):
    message = _one_message(
        http,
        {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "system", "content": "You are a coding assistant."}, {"role": "user", "content": "Write an example"}],
            "tool_choice": "required",
            "tools": [tool],
            "parallel_tool_calls": False,
            "seed": 5,
        },
        streamed,
    )
    assert message["finish_reason"] == "tool_calls"
    assert message["content"] in (None, "")
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == tool["function"]["name"]
    assert argument_key in json.loads(call["function"]["arguments"])


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("tools,tool_choice", [([], None), ([PYTHON_TOOL], "none")], ids=["no-tools", "choice-none"])
def test_completion_without_tool_call(http: httpx.Client, model: str, tools: list, tool_choice, streamed: bool):
    message = _one_message(
        http,
        {
            "model": model,
            "max_tokens": 16,
            "messages": [{"role": "system", "content": "You are a coding assistant."}, {"role": "user", "content": "say hello world with python"}],
            "tools": tools or None,
            "tool_choice": tool_choice,
        },
        streamed,
    )
    assert message.get("tool_calls") in (None, [])
    assert message["finish_reason"] in ("stop", "length")


def test_calc_result(client: openai.OpenAI, model: str):
    # The conversation shape of the origin (an assistant tool call, then the tool's result) is accepted.
    answer = client.chat.completions.create(
        model=model,
        max_tokens=8,
        messages=[
            {"role": "system", "content": "You are a tools-calling assistant."},
            {"role": "user", "content": "What's the y coordinate of a point on the unit sphere at angle 30 degrees?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_6789", "type": "function", "function": {"name": "calculate", "arguments": '{"expression":"sin(30 * pi / 180)"}'}}
                ],
            },
            {"role": "tool", "name": "calculate", "content": "0.55644242476", "tool_call_id": "call_6789"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "calculate",
                    "description": "A calculator function",
                    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
                },
            }
        ],
        tool_choice="none",
    )
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content is not None

