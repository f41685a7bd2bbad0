"""Anthropic's Messages API against the real server and a real worker, driven by the official ``anthropic`` SDK.

Bodies are checked with the SDK's own types (pydantic, strict: every field
the type requires is there, of its type); streams by their raw events, in
order; errors by the SDK's exception classes and Anthropic's error shape.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest
import trio
from anthropic.types import Message, MessageTokensCount
from anthropic.types.shared import ErrorResponse

from ..helpers import bounded

HELLO = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
    },
}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}
# Sampling fields that this SDK's create() no longer names travel in the body all the same.
GREEDY = {"extra_body": {"temperature": 0}}


def _sdk(server, **options: object) -> anthropic.AsyncAnthropic:  # noqa: ANN001
    return anthropic.AsyncAnthropic(base_url=server.openai_url, api_key=options.pop("api_key", "unused"), max_retries=0, **options)


def _message(body: dict) -> Message:
    """A Message body as the SDK's type reads it, strictly: a missing or mistyped required field fails."""
    return Message.model_validate(body, strict=True)


def _error(body: dict, kind: str) -> None:
    parsed = ErrorResponse.model_validate(body, strict=True)
    assert parsed.type == "error" and parsed.error.type == kind, body
    assert parsed.error.message and parsed.request_id


def _prompt(message: Message) -> int:
    """The prompt's tokens: those the prompt cache held are not input_tokens (Anthropic's usage)."""
    return message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)


def _sse(text: str) -> list[tuple[str, dict]]:
    """An SSE body as (event, data) pairs; every event names its type twice, the same."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"], block
        events.append((lines["event"], data))
    return events


@bounded(120)
async def test_create_returns_a_message(server):
    async with _sdk(server) as sdk:
        message = await sdk.messages.create(model="demo", max_tokens=12, messages=HELLO)
        raw = await sdk.messages.with_raw_response.create(model="demo", max_tokens=12, messages=HELLO)
    body = json.loads(raw.http_response.text)
    parsed = _message(body)
    assert parsed.id.startswith("msg_") and parsed.type == "message" and parsed.role == "assistant" and parsed.model == "demo"
    for answer in (message, parsed):
        assert answer.stop_reason in ("end_turn", "max_tokens") and answer.stop_sequence is None
        assert 1 <= answer.usage.output_tokens <= 12 and answer.usage.input_tokens > 0
        assert answer.usage.cache_creation_input_tokens == 0
        assert [block.type for block in answer.content] == ["text"]
    assert body["usage"]["cache_read_input_tokens"] >= 0


@bounded(120)
async def test_max_tokens_past_the_servers_cap_is_a_ceiling(server):
    """Claude Code asks for its Claude model's output limit (128,000): a local server generates up to its own."""
    async with _sdk(server) as sdk:
        # The SDK streams a request this long, as Claude Code does.
        async with sdk.messages.stream(model="demo", max_tokens=128_000, messages=HELLO, stop_sequences=[" "], **GREEDY) as stream:
            message = await stream.get_final_message()
    assert message.stop_reason in ("end_turn", "stop_sequence")
    if message.stop_reason == "stop_sequence":
        assert message.stop_sequence == " "


@bounded(120)
async def test_a_stream_is_anthropics_event_sequence(server):
    request = {"model": "demo", "max_tokens": 20, "messages": HELLO}
    async with _sdk(server) as sdk:
        whole = await sdk.messages.create(**request, **GREEDY)
        raw = [event async for event in await sdk.messages.create(**request, stream=True, **GREEDY)]
        async with sdk.messages.stream(**request, **GREEDY) as stream:
            final = await stream.get_final_message()
    kinds = [event.type for event in raw]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * (len(kinds) - 5), "content_block_stop", "message_delta", "message_stop"]
    start = raw[0].message
    assert start.id.startswith("msg_") and start.content == [] and start.stop_reason is None
    # The same prompt again: the prompt cache holds all of it but the last token.
    assert _prompt(start) == _prompt(whole) and start.usage.cache_read_input_tokens == _prompt(whole) - 1
    assert raw[1].content_block.type == "text" and raw[1].index == 0
    assert all(event.delta.type == "text_delta" and event.index == 0 for event in raw[2:-3])
    assert "".join(event.delta.text for event in raw[2:-3]) == whole.content[0].text == final.content[0].text
    assert raw[-2].delta.stop_reason == whole.stop_reason and raw[-2].usage.output_tokens == whole.usage.output_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens and final.stop_reason == whole.stop_reason


@bounded(120)
async def test_a_stream_opens_with_a_ping_and_its_sse_lines_name_each_event(client):
    request = {"model": "demo", "max_tokens": 5, "messages": HELLO, "stream": True}
    response = await client.post("/v1/messages", json=request, headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = _sse(response.text)
    assert events[0] == ("ping", {"type": "ping"})
    assert events[1][0] == "message_start" and events[-1] == ("message_stop", {"type": "message_stop"})


@bounded(120)
async def test_system_as_a_string_or_text_blocks(server):
    async with _sdk(server) as sdk:
        plain = await sdk.messages.create(model="demo", max_tokens=3, messages=HELLO)
        told = await sdk.messages.create(model="demo", max_tokens=3, messages=HELLO, system="You are terse.\nAnswer in one word.")
        blocks = await sdk.messages.create(
            model="demo",
            max_tokens=3,
            messages=HELLO,
            system=[{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in one word.", "cache_control": {"type": "ephemeral"}}],
        )
    assert _prompt(told) > _prompt(plain) + 5
    # Text blocks are joined by a line break.
    assert _prompt(blocks) == _prompt(told)


def _arguments_valid(block) -> None:  # noqa: ANN001
    tool = {"get_weather": WEATHER, "get_time": TIME}[block.name]
    jsonschema.validate(block.input, tool["input_schema"])


@bounded(120)
async def test_a_forced_tool_call_and_its_result_in_the_next_turn(server):
    question = [{"role": "user", "content": "What is the weather in Oslo?"}]
    async with _sdk(server) as sdk:
        called = await sdk.messages.create(
            model="demo", max_tokens=300, messages=question, tools=[WEATHER, TIME], tool_choice={"type": "tool", "name": "get_weather"}
        )
        assert called.stop_reason == "tool_use"
        (use,) = called.content
        assert use.type == "tool_use" and use.id.startswith("toolu_") and use.name == "get_weather"
        _arguments_valid(use)
        turn = [
            *question,
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in called.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "-3 and snowing"}]},
        ]
        answered = await sdk.messages.create(model="demo", max_tokens=5, messages=turn, tools=[WEATHER, TIME])
        failed = [*turn[:-1], {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "is_error": True,
                                                             "content": [{"type": "text", "text": "-3 and snowing"}]}]}]
        errored = await sdk.messages.create(model="demo", max_tokens=5, messages=failed, tools=[WEATHER, TIME])
    # The call and its result are in the prompt the model saw; an error result says so.
    assert _prompt(answered) > _prompt(called) + 10
    assert _prompt(errored) > _prompt(answered)


@bounded(120)
async def test_any_tool_streamed_as_input_json_deltas(server):
    request = {"model": "demo", "max_tokens": 300, "messages": HELLO, "tools": [WEATHER, TIME], "tool_choice": {"type": "any"}}
    async with _sdk(server) as sdk:
        raw = [event async for event in await sdk.messages.create(**request, stream=True)]
        async with sdk.messages.stream(**request) as stream:
            final = await stream.get_final_message()
    kinds = [event.type for event in raw]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    block = raw[1].content_block
    assert block.type == "tool_use" and block.input == {} and block.id.startswith("toolu_")
    assert raw[2].delta.type == "input_json_delta" and isinstance(json.loads(raw[2].delta.partial_json), dict)
    assert raw[-2].delta.stop_reason == "tool_use"
    (use,) = final.content
    _arguments_valid(use)
    assert final.stop_reason == "tool_use"


@bounded(120)
async def test_count_tokens_is_the_prompt_the_generation_reports(server):
    request = {
        "model": "demo",
        "messages": [{"role": "user", "content": "Count me, with the tools and the system prompt."}],
        "system": "Be brief.",
        "tools": [WEATHER],
    }
    async with _sdk(server) as sdk:
        counted = await sdk.messages.count_tokens(**request)
        raw = await sdk.messages.with_raw_response.count_tokens(**request)
        generated = await sdk.messages.create(**request, max_tokens=3)
        bare = await sdk.messages.count_tokens(model="demo", messages=request["messages"])
    MessageTokensCount.model_validate(json.loads(raw.http_response.text), strict=True)
    assert counted.input_tokens == _prompt(generated)
    assert bare.input_tokens + 20 < counted.input_tokens
