"""OpenAI's Responses API against the real server and a real worker, driven by the official openai SDK:
responses and stream events as OpenAI's OpenAPI description defines them, tools, structured output,
stored conversations (across a restart, per API key), input token counts, errors."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pydantic
import pytest
import trio

from mlxtrio import main

from ..helpers import bounded, make_config, sse_events, worker_entry

# Output the demo model cannot end early: a JSON object whose one string is at least this long.
LONG_SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 4000}},
    "required": ["story"],
    "additionalProperties": False,
}
LONG_FORMAT = {"format": {"type": "json_schema", "name": "long", "schema": LONG_SCHEMA, "strict": True}}
# Output the demo model finishes well within 64 tokens: text (never an end token first), and a completed response.
SHORT_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"], "additionalProperties": False}
SHORT_FORMAT = {"format": {"type": "json_schema", "name": "n", "schema": SHORT_SCHEMA, "strict": True}}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False},
    "strict": True,
}


def _sdk(server, key: str = "unused") -> openai.AsyncOpenAI:  # noqa: ANN001
    return openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key=key, max_retries=0)


async def _events(client: httpx.AsyncClient, body: dict) -> list[dict]:
    async with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events((await response.aread()).decode())  # type: ignore[return-value]


# Each event type's own schema: a failure against it says what is wrong, where the union's says only that none matched.
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "error": "ResponseErrorEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.reasoning_text.delta": "ResponseReasoningTextDeltaEvent",
    "response.reasoning_text.done": "ResponseReasoningTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
}


def _validate_event(event: dict, openapi) -> None:  # noqa: ANN001
    openapi.validate(event, EVENT_SCHEMAS[event["type"]])
    openapi.validate(event, "ResponseStreamEvent")


def _check_stream(events: list[dict], openapi) -> dict:  # noqa: ANN001
    """Every event valid, numbered in order, in the order OpenAI sends them; the final response."""
    for event in events:
        _validate_event(event, openapi)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1]["response"]
    # Each output item: added, its content, done, one after another, in output order.
    index = -1
    for event in events[2:-1]:
        if event["type"] == "response.output_item.added":
            assert event["output_index"] == index + 1
            index += 1
            opened = event["item"]
        elif "output_index" in event:
            assert event["output_index"] == index
            if event["type"] == "response.output_item.done":
                assert event["item"] == final["output"][index] and event["item"]["id"] == opened["id"]
    assert index == len(final["output"]) - 1
    return final


def _assert_one_item(events: list[dict], content: str, last: str) -> None:
    """A stream of one output item whose content part is ``content`` (output_text, reasoning_text): OpenAI's order of events."""
    kinds = [event["type"] for event in events]
    deltas = kinds.count(f"response.{content}.delta")
    assert deltas > 0 and kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *[f"response.{content}.delta"] * deltas,
        f"response.{content}.done",
        "response.content_part.done",
        "response.output_item.done",
        last,
    ]


@bounded(120)
async def test_create_a_response(server, client, openapi):
    body = {"model": "demo", "input": "Hello there", "max_output_tokens": 16, "instructions": "Be brief.", "metadata": {"k": "v"}}
    response = await client.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    created = response.json()
    openapi.validate(created, "Response")
    assert created["object"] == "response" and created["status"] in ("completed", "incomplete")
    assert created["instructions"] == "Be brief." and created["metadata"] == {"k": "v"} and created["model"] == "demo"
    [message] = created["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    usage = created["usage"]
    assert 0 < usage["output_tokens"] <= 16 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # Also without the /v1 prefix, as the OpenAI surface's paths.
    assert (await client.post("/responses", json=body)).json()["object"] == "response"
    async with _sdk(server) as sdk:
        made = [await sdk.responses.create(model="demo", input=[{"role": "user", "content": "hi"}], max_output_tokens=16) for _ in range(2)]
    assert made[0].output_text == made[0].output[0].content[0].text
    # The second shares the first's prompt: the prompt cache serves it.
    assert made[1].usage.input_tokens_details.cached_tokens > 0


@bounded(120)
async def test_a_stream_sends_openais_events_in_order(server, client, openapi):
    events = await _events(client, {"model": "demo", "input": "Hello there", "max_output_tokens": 64, "text": SHORT_FORMAT})
    final = _check_stream(events, openapi)
    _assert_one_item(events, "output_text", "response.completed")
    text = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == text
    # The SDK's stream helper wants a completed response.
    async with _sdk(server) as sdk:
        async with sdk.responses.stream(model="demo", input="Hello there", max_output_tokens=64, text=SHORT_FORMAT) as stream:
            streamed = [event.type async for event in stream]
            whole = await stream.get_final_response()
    assert streamed[0] == "response.created" and streamed[-1] == "response.completed"
    assert json.loads(whole.output_text)["n"] <= 9


@bounded(120)
async def test_output_at_max_output_tokens_is_incomplete(client, openapi):
    body = {"model": "demo", "input": "Tell a story", "max_output_tokens": 16, "text": LONG_FORMAT}
    whole = (await client.post("/v1/responses", json=body)).json()
    openapi.validate(whole, "Response")
    assert whole["status"] == "incomplete" and whole["incomplete_details"] == {"reason": "max_output_tokens"}
    assert whole["usage"]["output_tokens"] == 16 and whole["output"][0]["status"] == "incomplete"
    events = await _events(client, body)
    final = _check_stream(events, openapi)
    assert events[-1]["type"] == "response.incomplete" and final["status"] == "incomplete"


@bounded(120)
async def test_a_forced_function_call_and_its_output_in_the_next_turn(server, openapi):
    async with _sdk(server) as sdk:
        first = await sdk.responses.create(
            model="demo", input="Weather in Paris?", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}
        )
        [call] = [item for item in first.output if item.type == "function_call"]
        assert call.name == "get_weather" and "city" in json.loads(call.arguments)
        openapi.validate(first.model_dump(mode="json", exclude_unset=True), "Response")
        second = await sdk.responses.create(
            model="demo",
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'},
            ],
            tools=[WEATHER],
            max_output_tokens=16,
        )
        assert second.status in ("completed", "incomplete")
        # The same call, streamed: its arguments as events.
        async with sdk.responses.stream(
            model="demo", input="Weather in Rome?", tools=[WEATHER], tool_choice="required"
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    assert final.output[-1].type == "function_call" and json.loads(final.output[-1].arguments)["city"]


@bounded(120)
async def test_json_schema_output_parses_as_the_schema(server):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    async with _sdk(server) as sdk:
        response = await sdk.responses.create(
            model="demo", input="A person", text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}}
        )
    person = json.loads(response.output_text)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)

    # Bounded, so that the demo model's answer fits in max_output_tokens.
    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=20)
        age: int = pydantic.Field(ge=0, le=150)

    async with _sdk(server) as sdk:
        parsed = await sdk.responses.parse(model="demo", input="A person", text_format=Person, max_output_tokens=200)
    assert isinstance(parsed.output_parsed, Person)


@bounded(120)
async def test_logprobs_on_request(client, openapi):
    # The long format: exactly 16 tokens, all of them text.
    body = {"model": "demo", "input": "Hi", "max_output_tokens": 16, "top_logprobs": 2, "include": ["message.output_text.logprobs"], "text": LONG_FORMAT}
    whole = (await client.post("/v1/responses", json=body)).json()
    openapi.validate(whole, "Response")
    part = whole["output"][0]["content"][0]
    assert len(part["logprobs"]) == whole["usage"]["output_tokens"] and all(len(entry["top_logprobs"]) == 2 for entry in part["logprobs"])
    events = await _events(client, body)
    final = _check_stream(events, openapi)
    streamed = [entry for event in events if event["type"] == "response.output_text.delta" for entry in event["logprobs"]]
    assert len(streamed) == 16 and [entry["token"] for entry in streamed] == [entry["token"] for entry in final["output"][0]["content"][0]["logprobs"]]


def _state_config(cache_dir, tmp_path, **settings):  # noqa: ANN001, ANN202
    return make_config(cache_dir, tmp_path, state_dir=tmp_path / "state", **settings)


async def _serve(nursery: trio.Nursery, config):  # noqa: ANN001, ANN202
    return await nursery.start(lambda task_status: main(config, handle_signals=False, task_status=task_status))


@bounded(180)
async def test_previous_response_id_continues_a_conversation_across_a_restart(cache_dir, tmp_path, openapi):
    config = _state_config(cache_dir, tmp_path)
    async with trio.open_nursery() as nursery:
        first_server = await _serve(nursery, config)
        async with _sdk(first_server) as sdk:
            first = await sdk.responses.create(model="demo", input="My name is Ada.", max_output_tokens=16)
        first_server.shutdown()
    async with trio.open_nursery() as nursery:
        server = await _serve(nursery, config)
        async with _sdk(server) as sdk, httpx.AsyncClient(base_url=server.openai_url) as client:
            second = await sdk.responses.create(model="demo", input="What is my name?", previous_response_id=first.id, max_output_tokens=16)
            assert second.previous_response_id == first.id
            # The history was fed to the model: more prompt than the new input alone.
            alone = await sdk.responses.create(model="demo", input="What is my name?", max_output_tokens=16)
            assert second.usage.input_tokens > alone.usage.input_tokens + 5
            retrieved = (await client.get(f"/v1/responses/{second.id}")).json()
            openapi.validate(retrieved, "Response")
            assert retrieved["output"] == second.model_dump(mode="json", exclude_unset=True)["output"]
            items = (await client.get(f"/v1/responses/{first.id}/input_items")).json()
            openapi.validate(items, "ResponseItemList")
            assert [item["content"][0]["text"] for item in items["data"]] == ["My name is Ada."]
            assert (await sdk.responses.input_items.list(first.id)).data[0].role == "user"
            await sdk.responses.delete(first.id)
            with pytest.raises(openai.NotFoundError):
                await sdk.responses.retrieve(first.id)
            with pytest.raises(openai.NotFoundError) as missing:
                await sdk.responses.create(model="demo", input="again", previous_response_id=first.id)
            assert missing.value.body["param"] == "previous_response_id"
            not_kept = await sdk.responses.create(model="demo", input="forget me", store=False, max_output_tokens=16)
            assert (await client.get(f"/v1/responses/{not_kept.id}")).status_code == 404
        server.shutdown()


@bounded(120)
async def test_an_input_over_the_context_is_named_as_the_input(client, openapi):
    """The worker measures a chat's messages; a Responses request calls them its input (param and wording)."""
    for stream in (False, True):
        body = {"model": "demo", "input": "the " * 5000, "max_output_tokens": 16, "stream": stream}
        refused = await client.post("/v1/responses", json=body)
        assert refused.status_code == 400, refused.text
        openapi.validate(refused.json(), "ErrorResponse")
        error = refused.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "input"
        assert "messages" not in error["message"] and "length of the input" in error["message"]


@bounded(120)
async def test_a_streamed_response_is_kept_before_its_last_event(client, openapi):
    """A client that continues a conversation as soon as the stream's response.completed arrives finds it stored."""
    body = {"model": "demo", "input": "My name is Ada.", "max_output_tokens": 16, "stream": True}
    async with client.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                if event["type"] in ("response.completed", "response.incomplete"):
                    break
        # The connection is still open: the stream's own end has not been read yet.
        kept = await client.get(f"/v1/responses/{event['response']['id']}")
    assert kept.status_code == 200, kept.text
    openapi.validate(kept.json(), "Response")
    assert kept.json()["output"] == event["response"]["output"]


@pytest.mark.parametrize("server_settings", [{"max_body_bytes": 8192}])
@bounded(120)
async def test_a_conversation_continued_past_the_body_bound_is_a_400(client, openapi):
    """A chain of stored turns would otherwise grow a prompt past what any one body may send, and every turn
    would load, convert and send all of it: the conversation so far and the new input are held to the body's bound."""
    first = await client.post("/v1/responses", json={"model": "demo", "input": "the " * 1500, "max_output_tokens": 16})
    assert first.status_code == 200, first.text[:300]
    for path in ("/v1/responses", "/v1/responses/input_tokens"):
        body = {"model": "demo", "input": "the " * 700, "previous_response_id": first.json()["id"], "max_output_tokens": 16}
        refused = await client.post(path, json=body if path == "/v1/responses" else {**body, "max_output_tokens": None})
        assert refused.status_code == 400, refused.text[:300]
        openapi.validate(refused.json(), "ErrorResponse")
        error = refused.json()["error"]
        assert error["param"] == "previous_response_id" and "8192 bytes (MLX_MAX_BODY_BYTES)" in error["message"], error
    short = await client.post("/v1/responses", json={"model": "demo", "input": "hi", "previous_response_id": first.json()["id"], "max_output_tokens": 16})
    assert short.status_code == 200, short.text[:300]


@pytest.mark.parametrize("server_settings", [{"api_keys": ("key-one", "key-two")}])
@bounded(120)
async def test_a_stored_response_is_its_api_keys_alone(server, openapi):
    async with _sdk(server, "nope") as stranger:
        with pytest.raises(openai.AuthenticationError) as refused:
            await stranger.responses.create(model="demo", input="hi")
    openapi.validate(refused.value.response.json(), "ErrorResponse")
    async with _sdk(server, "key-one") as one, _sdk(server, "key-two") as two:
        mine = await one.responses.create(model="demo", input="secret", max_output_tokens=16)
        assert (await one.responses.retrieve(mine.id)).id == mine.id
        with pytest.raises(openai.NotFoundError):
            await two.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await two.responses.create(model="demo", input="more", previous_response_id=mine.id)
        with pytest.raises(openai.NotFoundError):
            await two.responses.delete(mine.id)
        with pytest.raises(openai.NotFoundError):
            await two.responses.input_items.list(mine.id)
        assert (await one.responses.retrieve(mine.id)).id == mine.id


@bounded(120)
async def test_input_tokens_counts_what_a_response_is_fed(server, client, openapi):
    request = {
        "model": "demo",
        "instructions": "Answer in French.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}],
        "tools": [WEATHER],
    }
    counted = await client.post("/v1/responses/input_tokens", json=request)
    assert counted.status_code == 200, counted.text
    openapi.validate(counted.json(), "TokenCountsResource")
    created = (await client.post("/v1/responses", json={**request, "max_output_tokens": 16})).json()
    assert counted.json() == {"object": "response.input_tokens", "input_tokens": created["usage"]["input_tokens"]}
    # The instructions and the tools are in the prompt.
    bare = (await client.post("/v1/responses/input_tokens", json={"model": "demo", "input": request["input"]})).json()
    assert bare["input_tokens"] + 10 < counted.json()["input_tokens"]
    async with _sdk(server) as sdk:
        count = await sdk.responses.input_tokens.count(model="demo", input="Hello")
    assert count.input_tokens > 0


@bounded(120)
async def test_instructions_and_opening_developer_messages_are_one_system_message(client):
    """Chat templates know a system role, often only first; Codex CLI sends its system prompt as two developer messages."""
    user = {"role": "user", "content": "hi"}
    as_developer = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"type": "message", "role": "system", "content": "Be kind."},
        user,
    ]
    counts = []
    for request in (
        {"instructions": "Be brief.\n\nBe kind.", "input": [user]},
        {"input": as_developer},
        {"instructions": "Be brief.", "input": as_developer[1:]},
    ):
        response = await client.post("/v1/responses/input_tokens", json={"model": "demo", **request})
        counts.append(response.json()["input_tokens"])
    assert counts[0] == counts[1] == counts[2]
    # Later, a developer message is a system one (the demo's template would write a developer role as text, a system one as its token).
    later = [user, {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "again"}]
    renamed = [user, {"role": "system", "content": "Be brief."}, {"role": "user", "content": "again"}]
    assert len({(await client.post("/v1/responses/input_tokens", json={"model": "demo", "input": items})).json()["input_tokens"] for items in (later, renamed)}) == 1


BAD = {"model": "demo", "input": "hi"}
BAD_BODIES = [
    (b"{", None),
    (b"[]", None),
    (b"{}", "model"),
    (b'{"model": "demo"}', "input"),
    (json.dumps({**BAD, "input": []}).encode(), "input"),
    (json.dumps({**BAD, "input": [{"role": "wizard", "content": "hi"}]}).encode(), "input[0].role"),
    (json.dumps({**BAD, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}).encode(), "input[0].content[0]"),
    (json.dumps({**BAD, "input": [{"type": "function_call", "call_id": "c", "name": "bad name!", "arguments": "{}"}]}).encode(), "input[0].name"),
    (json.dumps({**BAD, "input": [{"type": "item_reference", "id": "msg_1"}]}).encode(), "input[0].type"),
    (json.dumps({**BAD, "input": [{"type": "computer_call_output", "call_id": "c"}]}).encode(), "input[0].type"),
    (json.dumps({**BAD, "tools": [{"type": "web_search"}]}).encode(), "tools[0].type"),
    (json.dumps({**BAD, "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}).encode(), "tools[0].type"),
    (json.dumps({**BAD, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}).encode(), "tool_choice.name"),
    (json.dumps({**BAD, "tool_choice": {"type": "web_search_preview"}}).encode(), "tool_choice.type"),
    (json.dumps({**BAD, "tool_choice": "required"}).encode(), "tool_choice"),
    (json.dumps({**BAD, "max_output_tokens": 15}).encode(), "max_output_tokens"),
    (json.dumps({**BAD, "temperature": 3}).encode(), "temperature"),
    (json.dumps({**BAD, "top_p": 0}).encode(), "top_p"),
    (json.dumps({**BAD, "top_logprobs": 21}).encode(), "top_logprobs"),
    (json.dumps({**BAD, "metadata": {f"k{i}": "v" for i in range(17)}}).encode(), "metadata"),
    (json.dumps({**BAD, "metadata": {"k" * 65: "v"}}).encode(), "metadata"),
    (json.dumps({**BAD, "metadata": {"k": "v" * 513}}).encode(), "metadata.k"),
    (json.dumps({**BAD, "metadata": {"k": 1}}).encode(), "metadata[...]"),
    (json.dumps({**BAD, "reasoning": {"effort": "extreme"}}).encode(), "reasoning.effort"),
    (json.dumps({**BAD, "truncation": "auto"}).encode(), "truncation"),
    (json.dumps({**BAD, "include": ["everything"]}).encode(), "include[0]"),
    (json.dumps({**BAD, "text": {"format": {"type": "json_schema", "name": "x"}}}).encode(), "text.format.schema"),
    (json.dumps({**BAD, "text": {"format": {"type": "xml"}}}).encode(), "text.format.type"),
    (json.dumps({**BAD, "background": True}).encode(), "background"),
    (json.dumps({**BAD, "max_tool_calls": 0}).encode(), "max_tool_calls"),
    (json.dumps({**BAD, "max_tool_calls": 2**40}).encode(), "max_tool_calls"),
    (json.dumps({**BAD, "text": {"verbosity": "epic"}}).encode(), "text.verbosity"),
    (json.dumps({**BAD, "input": [{"type": "reasoning", "summary": [{"type": "input_text", "text": "x"}]}]}).encode(), "input[0].summary[0]"),
    (json.dumps({**BAD, "input": [{"type": "function_call_output", "output": "x"}]}).encode(), "input[0].call_id"),
    (json.dumps({**BAD, "tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "web_search"}]}]}).encode(), "tools[0].tools[0].type"),
    (json.dumps({**BAD, "tools": [WEATHER, {"type": "namespace", "name": "ns", "tools": [WEATHER]}]}).encode(), "tools"),
    (json.dumps({**BAD, "conversation": "conv_1"}).encode(), "conversation"),
    (json.dumps({**BAD, "stream": "yes"}).encode(), "stream"),
    (b'{"model": "demo", "input": "hi", "max_output_tokens": 1e400}', "max_output_tokens"),
    # Over the context: the worker names the prompt's messages, which are the input here.
    (json.dumps({**BAD, "input": "the " * 5000}).encode(), "input"),
    (json.dumps({**BAD, "input": [{"role": "user", "content": "the " * 5000}], "stream": True}).encode(), "input"),
    (b"\xff\xfe not utf-8", None),
    (b'{"model": "demo", "input": ' + b"[" * 100000 + b"]" * 100000 + b"}", "input[0]"),
    # Deep nesting inside an ignored field: msgspec recurses while skipping it.
    (b'{"model": "demo", "input": "hi", "extra": ' + b"[" * 100000 + b"]" * 100000 + b"}", None),
]


@bounded(120)
async def test_hostile_and_malformed_bodies_get_openai_shaped_400s(client, openapi):
    for body, param in BAD_BODIES:
        response = await client.post("/v1/responses", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (body[:200], response.text)
        openapi.validate(response.json(), "ErrorResponse")
        assert response.json()["error"]["param"] == param, (body[:200], response.json())
    over = await client.post("/v1/responses/input_tokens", json={**BAD, "input": "the " * 70_000})
    assert over.status_code == 400 and over.json()["error"]["param"] == "input", over.text[:300]
    for path in ("/v1/responses/resp_nope", "/v1/responses/resp_nope/input_items"):
        missing = await client.get(path)
        assert missing.status_code == 404
        openapi.validate(missing.json(), "ErrorResponse")
    assert (await client.delete("/v1/responses/resp_nope")).status_code == 404
    assert (await client.get("/v1/responses/resp_nope/input_items?limit=0")).json()["error"]["param"] == "limit"
    unknown_model = await client.post("/v1/responses", json={**BAD, "model": "nope"})
    assert unknown_model.status_code == 404
    openapi.validate(unknown_model.json(), "ErrorResponse")
    # Unrouted paths and methods under the surface's prefix: its shape too.
    for method, path in (("GET", "/v1/responses/a/b/c"), ("PUT", "/v1/responses")):
        response = await client.request(method, path)
        assert response.status_code in (404, 405)
        openapi.validate(response.json(), "ErrorResponse")


@bounded(120)
async def test_metrics_and_request_logs_name_the_surface(client, admin):
    assert (await client.post("/v1/responses", json={**BAD, "max_output_tokens": 16})).status_code == 200
    assert (await client.post("/v1/responses", json={**BAD, "temperature": 9})).status_code == 400
    metrics = (await admin.get("/metrics")).text
    assert 'mlxtrio_requests_total{endpoint="/v1/responses",model="demo",status="200",surface="responses"} 1.0' in metrics
    assert 'mlxtrio_requests_total{endpoint="/v1/responses",model="",status="400",surface="responses"} 1.0' in metrics


@bounded(60)
async def test_a_worker_killed_mid_stream_is_a_failure_event_within_a_second(client, admin, openapi):
    events: list[dict] = []
    started = trio.Event()

    async def stream() -> None:
        body = {"model": "demo", "input": "Tell a story", "text": LONG_FORMAT, "stream": True}
        async with client.stream("POST", "/v1/responses", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
                    if events[-1]["type"] == "response.output_text.delta":
                        started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream)
        await started.wait()
        os.kill((await worker_entry(admin))["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
    assert time.monotonic() - killed_at < 1.0
    for event in events:
        _validate_event(event, openapi)
    assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "worker_crashed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"


CODEX = json.loads((Path(__file__).parent / "captures" / "codex.json").read_text())


@bounded(120)
async def test_what_codex_cli_sends_is_served(client, openapi):
    """Codex CLI's own request bodies (tests/api/captures/codex.json): every field accepted, its namespace of tools
    offered as functions, the turn that carries a call's output served; a hosted tool is a 400 naming it."""
    first = _check_stream(await _events(client, CODEX["turn1"]), openapi)
    assert first["status"] in ("completed", "incomplete") and first["store"] is False
    second = {
        **CODEX["turn1"],
        "tools": [*CODEX["turn1"]["tools"], CODEX["namespace"]],
        "input": [*CODEX["turn1"]["input"], CODEX["function_call"], CODEX["function_call_output"]],
    }
    _check_stream(await _events(client, second), openapi)
    # Forced to call the namespaced function: its call names the namespace.
    spawned = CODEX["namespace"]["tools"][0]["name"]
    forced = (await client.post("/v1/responses", json={**second, "stream": False, "tool_choice": {"type": "function", "name": spawned}})).json()
    openapi.validate(forced, "Response")
    assert forced["output"][-1]["name"] == spawned and forced["output"][-1]["namespace"] == CODEX["namespace"]["name"]
    hosted = await client.post("/v1/responses", json={**CODEX["turn1"], "tools": [*CODEX["turn1"]["tools"], CODEX["web_search"]]})
    assert hosted.status_code == 400
    error = hosted.json()["error"]
    assert error["param"] == "tools[2].type" and "web_search" in error["message"]


@bounded(120)
async def test_reasoning_effort_is_the_thinking_switch_and_the_thinking_a_reasoning_item(client, openapi):
    """The demo model thinks when its template's switch is on (and never closes its think block)."""
    # Greedy: sampled, the demo may end its turn before 16 tokens.
    body = {"model": "demo", "input": "Think first.", "max_output_tokens": 16, "temperature": 0}
    thought = (await client.post("/v1/responses", json={**body, "reasoning": {"effort": "high", "summary": "auto"}})).json()
    openapi.validate(thought, "Response")
    [reasoning] = thought["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"][0]["type"] == "reasoning_text" and reasoning["content"][0]["text"]
    assert thought["usage"]["output_tokens_details"]["reasoning_tokens"] == thought["usage"]["output_tokens"] == 16
    events = await _events(client, {**body, "reasoning": {"effort": "medium"}})
    final = _check_stream(events, openapi)
    _assert_one_item(events, "reasoning_text", "response.incomplete")
    assert final["output"][0]["content"][0]["text"] == "".join(event["delta"] for event in events if event["type"] == "response.reasoning_text.delta")
    for effort in ("none", "minimal"):
        plain = (await client.post("/v1/responses", json={**body, "reasoning": {"effort": effort}})).json()
        assert [item["type"] for item in plain["output"]] == ["message"]
        assert plain["usage"]["output_tokens_details"]["reasoning_tokens"] == 0


@bounded(120)
async def test_a_reasoning_item_reaches_the_template_with_the_turn_it_precedes(client):
    turn = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        {"role": "user", "content": "again"},
    ]
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "a long thought " * 8}]}
    counts = []
    for items in (turn, [turn[0], reasoning, *turn[1:]]):
        response = await client.post("/v1/responses/input_tokens", json={"model": "demo", "input": items})
        assert response.status_code == 200, response.text
        counts.append(response.json()["input_tokens"])
    assert counts[1] > counts[0] + 8
