"""Anthropic's Messages API against the real server and a real worker, driven by the official ``anthropic`` SDK.

Bodies are checked with the SDK's own types (pydantic, strict: every field
the type requires is there, of its type); streams by their raw events, in
order; errors by the SDK's exception classes and Anthropic's error shape.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import anthropic
import jsonschema
import msgspec
import pytest
from anthropic.types import Message, MessageTokensCount
from anthropic.types.shared import ErrorResponse
from prometheus_client.parser import text_string_to_metric_families

from mlxtrio import ErrorKind, ServerError
from mlxtrio import _protocol as p
from mlxtrio.api._common import RequestLimits
from mlxtrio.api._errors import STATUS
from mlxtrio.api.anthropic._errors import anthropic_error
from mlxtrio.api.anthropic._schemas import MessagesRequest
from mlxtrio.api.anthropic._serving import generation_request

from ..helpers import bounded, worker_entry

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


def _error(body: dict, kind: str, *, request_id: bool = True) -> None:
    """Anthropic's error body, as the SDK's type reads it (whose union lacks the documented request_too_large)."""
    if kind == "request_too_large":
        body = {**body, "error": {**body["error"], "type": "invalid_request_error"}}
    parsed = ErrorResponse.model_validate(body, strict=True)
    assert parsed.type == "error" and parsed.error.message, body
    assert parsed.error.type == kind or kind == "request_too_large", body
    assert parsed.request_id if request_id else True


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
    # message_start goes out with the 200, at admission: the prompt's tokens are known, not yet how many the cache holds.
    assert start.usage.input_tokens == _prompt(whole) and start.usage.cache_read_input_tokens == 0
    # The same prompt again: the prompt cache holds all of it but the last token, as message_delta says.
    assert raw[-2].usage.cache_read_input_tokens == _prompt(whole) - 1 and raw[-2].usage.input_tokens == 1
    assert final.usage.cache_read_input_tokens == _prompt(whole) - 1 and _prompt(final) == _prompt(whole)
    assert raw[1].content_block.type == "text" and raw[1].index == 0
    assert all(event.delta.type == "text_delta" and event.index == 0 for event in raw[2:-3])
    assert "".join(event.delta.text for event in raw[2:-3]) == whole.content[0].text == final.content[0].text
    assert raw[-2].delta.stop_reason == whole.stop_reason and raw[-2].usage.output_tokens == whole.usage.output_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens and final.stop_reason == whole.stop_reason


@bounded(120)
async def test_a_stream_opens_with_message_start_and_its_sse_lines_name_each_event(client):
    request = {"model": "demo", "max_tokens": 5, "messages": HELLO, "stream": True}
    response = await client.post("/v1/messages", json=request, headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = _sse(response.text)
    assert events[0][0] == "message_start" and events[-1] == ("message_stop", {"type": "message_stop"})
    assert events[0][1]["message"]["usage"]["input_tokens"] == events[-2][1]["usage"]["input_tokens"] > 0


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


# --- what real clients send, and what cannot be honoured


@bounded(120)
async def test_the_fields_claude_code_sends_are_accepted(client):
    """Claude Code's body, shortened (the captures in docs/API.md's list): betas, cache_control everywhere, a system
    message between turns, adaptive thinking shown as omitted, context management, effort, deferred tools."""
    body = {
        "model": "demo",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": "hi"}]},
            {"role": "system", "content": [{"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}], "output_config": {"effort": "medium"}},
        ],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.18b; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "tools": [
            {**WEATHER, "cache_control": {"type": "ephemeral"}, "strict": True, "eager_input_streaming": True},
            {"name": "DeferredToolPlaceholder", "description": "never call this tool", "input_schema": {"type": "object", "properties": {}}, "defer_loading": True},
        ],
        "metadata": {"user_id": '{"device_id": "a01b"}'},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "service_tier": "auto",
        "cache_control": {"type": "ephemeral"},
        "stream": True,
    }
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27",
        "x-app": "cli",
    }
    response = await client.post("/v1/messages?beta=true", json=body, headers=headers)
    assert response.status_code == 200, response.text
    kinds = [kind for kind, _ in _sse(response.text)]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    counted = await client.post("/v1/messages/count_tokens?beta=true", json={k: v for k, v in body.items() if k not in ("max_tokens", "stream")}, headers=headers)
    shown = await client.post(
        "/v1/messages/count_tokens", json={"model": "demo", "messages": body["messages"], "system": body["system"][1:], "tools": body["tools"][:1]}
    )
    # The billing header and the deferred tool are not shown to the model.
    assert counted.status_code == 200 and counted.json() == shown.json()


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]}, "messages.0.content.0: the model 'demo' does not take images"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}, "documents"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}]}, "messages.0.content.0.content.0.source: images by file_id"),
        ({"messages": [*HELLO, {"role": "assistant", "content": "The answer is ("}]}, "prefill"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}, "tools.0.type"),
        ({"mcp_servers": [{"type": "url", "url": "https://example.com/sse", "name": "x"}]}, "mcp_servers"),
        ({"container": "container_1"}, "container"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}, "tools": [WEATHER], "tool_choice": {"type": "any"}}, "thinking"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, "tool_choice.name"),
        ({"tool_choice": {"type": "any"}}, "needs tools"),
        ({"tools": [{"name": "has space", "input_schema": {"type": "object"}}]}, "tools.0.name"),
        ({"tools": [WEATHER, TIME, WEATHER]}, "tools.2.name: tool names must be unique"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": ["x"] * 17}, "stop_sequences"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "the " * 5000}]}, "prompt is too long: This model's maximum context length is 4096 tokens"),
    ],
)
@bounded(60)
async def test_what_cannot_be_honoured_is_a_400_that_says_so(server, fields, says):
    async with _sdk(server) as sdk:
        with pytest.raises(anthropic.BadRequestError) as refused:
            # The body's fields over these: some of them this SDK no longer names.
            await sdk.messages.create(model="demo", max_tokens=5, messages=HELLO, extra_body=fields)
    assert refused.value.status_code == 400
    _error(refused.value.body, "invalid_request_error")
    assert says in refused.value.body["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "demo", "max_tokens": 5, "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        json.dumps({"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}] * 200_000}).encode()[:-1] + b', "stop_sequences": ' + json.dumps(["x"] * 100_000).encode() + b"}",
        json.dumps({"model": "demo", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}, *HELLO]}).encode().replace(b'"input": {}', b'"input": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000),
        b'{"model": "demo", "max_tokens": "many", "messages": []}',
        b'{"model": "demo", "max_tokens": 5, "messages": "hi"}',
        b'{"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}',
        b'{"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
        b'{"model": 7, "max_tokens": 5, "messages": []}',
        b'{"model": "demo", "max_tokens": 1e400, "messages": []}',
        b'{"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "\xff"}]}',
        b'[1, 2, 3]',
        b'{"model": "demo", "messages": [{"role": "user", "content": "no max_tokens"}]}',
        b"not json",
    ],
    ids=["deep", "huge", "deep-input", "type", "messages-str", "content-int", "text-missing", "model-int", "huge-number", "utf8", "array", "missing", "garbage"],
)
@bounded(60)
async def test_hostile_bodies_are_400s_in_anthropics_shape(client, body):
    response = await client.post("/v1/messages", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    _error(response.json(), "invalid_request_error")
    assert (await client.get("/health")).status_code == 200


# --- errors: Anthropic's shape and status on every path


def test_every_error_kind_has_an_anthropic_body_that_the_sdk_reads():
    expected = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error"}
    for kind in ErrorKind:
        body = anthropic_error(ServerError(kind, "what went wrong", code="a_code", param="a_field"))
        assert body["error"]["message"] == "what went wrong"
        _error(body, expected.get(STATUS[kind], body["error"]["type"]), request_id=False)


@pytest.mark.parametrize("server_settings", [{"api_keys": ("sk-one", "sk-two")}])
@bounded(60)
async def test_api_keys_as_x_api_key_or_bearer_and_401s_in_anthropics_shape(server, client):
    async with _sdk(server, api_key="sk-one") as by_header, anthropic.AsyncAnthropic(
        base_url=server.openai_url, auth_token="sk-two", max_retries=0
    ) as by_bearer:
        assert (await by_header.messages.create(model="demo", max_tokens=2, messages=HELLO)).type == "message"
        assert (await by_bearer.messages.count_tokens(model="demo", messages=HELLO)).input_tokens > 0
    async with _sdk(server, api_key="sk-wrong") as wrong:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await wrong.messages.create(model="demo", max_tokens=2, messages=HELLO)
    _error(refused.value.body, "authentication_error")
    # Without a key, before any route is matched: on this surface's paths, its shape.
    for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/messages/batches"):
        response = await client.post(path, json={})
        assert response.status_code == 401
        _error(response.json(), "authentication_error")


@bounded(60)
async def test_errors_before_the_view_and_from_the_model_in_anthropics_shape(server, client):
    cases = [
        (await client.post("/v1/messages/batches", json={}), 404, "not_found_error"),
        (await client.get("/v1/messages"), 405, "invalid_request_error"),
        (await client.post("/v1/messages", json={"model": "demo", "max_tokens": 5, "messages": HELLO}, headers={"Origin": "http://evil.example"}), 403, "permission_error"),
        (await client.post("/v1/messages", content=b"{}", headers={"content-type": "text/plain"}), 415, "invalid_request_error"),
        (await client.post("/v1/messages", content=b'{"model": "' + b"x" * (17 * 1024 * 1024) + b'"}', headers={"content-type": "application/json"}), 413, "request_too_large"),
    ]
    for response, status, kind in cases:
        assert response.status_code == status, response.text
        _error(response.json(), kind)
    async with _sdk(server) as sdk:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await sdk.messages.create(model="claude-opus-5-5", max_tokens=5, messages=HELLO)
        _error(missing.value.body, "not_found_error")
        server.state.shutting_down = True
        try:
            with pytest.raises(anthropic.APIStatusError) as stopping:
                await sdk.messages.create(model="demo", max_tokens=5, messages=HELLO)
        finally:
            server.state.shutting_down = False
    assert stopping.value.status_code == 503
    _error(stopping.value.body, "overloaded_error")


@pytest.mark.parametrize("server_settings", [{"decode_concurrency": 1, "max_queue": 1}])
@bounded(120)
async def test_a_full_queue_is_a_429_rate_limit_error(server, client):
    long = {"model": "demo", "prompt": "go", "max_tokens": 3000, "ignore_eos": True, "stream": True}
    # A stream's 200 comes once the worker has taken it in: then one decodes and one waits, and the queue is full.
    async with client.stream("POST", "/v1/completions", json=long) as first, client.stream("POST", "/v1/completions", json=long) as second:
        assert first.status_code == second.status_code == 200
        async with _sdk(server) as sdk:
            with pytest.raises(anthropic.RateLimitError) as refused:
                await sdk.messages.create(model="demo", max_tokens=5, messages=HELLO)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    _error(refused.value.body, "rate_limit_error")


# A prompt whose prefill takes hundreds of steps of 8 tokens, several times the request timeout below; pings every 50 ms meanwhile.
LONG_PREFILL = {"prefill_step_size": 8, "stream_keepalive": 0.05}
LONG_PROMPT = {"model": "demo", "max_tokens": 10, "messages": [{"role": "user", "content": "the " * 3500}], "stream": True}


async def _events(client, body: dict, *, kill_after, admin) -> tuple[list[tuple[str, dict]], float]:  # noqa: ANN001
    """Stream ``body``; kill the model's worker once ``kill_after(events)``; the events and seconds from the kill to the end."""
    events: list[tuple[str, dict]] = []
    killed_at = None
    async with client.stream("POST", "/v1/messages", json=body) as response:
        assert response.status_code == 200
        kind = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
                if killed_at is None and kill_after(events):
                    os.kill((await worker_entry(admin))["pid"], signal.SIGKILL)
                    killed_at = time.monotonic()
    assert killed_at is not None, events
    return events, time.monotonic() - killed_at


@pytest.mark.parametrize("server_settings", [LONG_PREFILL])
@bounded(120)
async def test_pings_while_the_prefill_runs_and_a_worker_killed_then_is_an_error_event(client, admin):
    events, took = await _events(client, LONG_PROMPT, kill_after=lambda events: len(events) == 3, admin=admin)
    assert took < 1.0
    assert [kind for kind, _ in events] == ["message_start", "ping", "ping", "error"], "the kill came after prefill; the prompt is too short for this machine"
    _error(events[-1][1], "overloaded_error")
    assert "SIGKILL" in events[-1][1]["error"]["message"] or "crash" in events[-1][1]["error"]["message"]


@bounded(120)
async def test_a_worker_killed_mid_stream_is_an_error_event_within_a_second(client, admin):
    body = {"model": "demo", "max_tokens": 4000, "messages": HELLO, "stream": True, "temperature": 0}
    events, took = await _events(client, body, kill_after=lambda events: events[-1][0] == "content_block_delta", admin=admin)
    assert took < 1.0
    kinds = [kind for kind, _ in events]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"] and kinds[-1] == "error"
    assert "message_stop" not in kinds
    _error(events[-1][1], "overloaded_error")
    # The next request gets a fresh worker.
    assert (await client.post("/v1/messages", json={**body, "stream": False, "max_tokens": 2})).status_code == 200


@pytest.mark.parametrize("server_settings", [{**LONG_PREFILL, "request_timeout": 0.5}])
@bounded(120)
async def test_the_request_timeout_is_a_504_timeout_error_or_its_event(client, admin):
    assert (await admin.post("/admin/load", json={"model": "demo"})).status_code == 200
    whole = await client.post("/v1/messages", json={**LONG_PROMPT, "stream": False})
    assert whole.status_code == 504
    _error(whole.json(), "timeout_error")
    streamed = _sse((await client.post("/v1/messages", json=LONG_PROMPT)).text)
    assert streamed[0][0] == "message_start" and {kind for kind, _ in streamed[1:-1]} == {"ping"} and streamed[-1][0] == "error"
    _error(streamed[-1][1], "timeout_error")


@bounded(120)
async def test_an_output_format_and_a_stop_sequence(server):
    schema = {"type": "object", "properties": {"sunny": {"type": "boolean"}, "wind": {"enum": ["calm", "stormy"]}}, "required": ["sunny", "wind"]}
    async with _sdk(server) as sdk:
        formatted = await sdk.messages.create(
            model="demo", max_tokens=200, messages=HELLO, extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}}
        )
        beta = await sdk.messages.create(model="demo", max_tokens=200, messages=HELLO, extra_body={"output_format": {"type": "json_schema", "schema": schema}})
        free = await sdk.messages.create(model="demo", max_tokens=30, messages=HELLO, **GREEDY)
        word = free.content[0].text.split()[1]
        stopped = await sdk.messages.create(model="demo", max_tokens=30, messages=HELLO, stop_sequences=["\u2603", word], **GREEDY)
    for answer in (formatted, beta):
        assert answer.stop_reason == "end_turn"
        jsonschema.validate(json.loads(answer.content[0].text), schema)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert free.content[0].text.startswith(stopped.content[0].text) and word not in stopped.content[0].text


# --- thinking: the demo model's template opens a think block when thinking is on, and it never closes it


@bounded(120)
async def test_thinking_enabled_answers_with_a_thinking_block(server):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    async with _sdk(server) as sdk:
        raw = await sdk.messages.with_raw_response.create(model="demo", max_tokens=10, messages=HELLO, thinking=thinking, **GREEDY)
        message = _message(json.loads(raw.http_response.text))
        # Greedy: a sampled answer may end at its first token, with no text block.
        off = await sdk.messages.create(model="demo", max_tokens=10, messages=HELLO, thinking={"type": "disabled"}, **GREEDY)
        default = await sdk.messages.create(model="demo", max_tokens=10, messages=HELLO, **GREEDY)
        events = [event async for event in await sdk.messages.create(model="demo", max_tokens=10, messages=HELLO, thinking=thinking, stream=True, **GREEDY)]
        async with sdk.messages.stream(model="demo", max_tokens=10, messages=HELLO, thinking=thinking, **GREEDY) as stream:
            final = await stream.get_final_message()
        # The thinking goes back in the next turn, as the template's reasoning_content.
        turn = [*HELLO, {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in final.content] + [{"type": "text", "text": "Hi."}]},
                {"role": "user", "content": "And?"}]
        again = await sdk.messages.count_tokens(model="demo", messages=turn, thinking=thinking)
        without = await sdk.messages.count_tokens(model="demo", messages=[*turn[:1], {"role": "assistant", "content": "Hi."}, turn[2]], thinking=thinking)
    (block,) = message.content
    assert block.type == "thinking" and block.thinking and block.signature and message.stop_reason == "max_tokens"
    assert [block.type for block in off.content] == [block.type for block in default.content] == ["text"]
    kinds = [(event.type, getattr(getattr(event, "delta", None), "type", None)) for event in events]
    assert kinds[:2] == [("message_start", None), ("content_block_start", None)] and events[1].content_block.type == "thinking"
    assert {kind for kind in kinds[2:-4]} == {("content_block_delta", "thinking_delta")}
    assert kinds[-4:] == [("content_block_delta", "signature_delta"), ("content_block_stop", None), ("message_delta", None), ("message_stop", None)]
    (streamed,) = final.content
    assert streamed.type == "thinking" and streamed.thinking == "".join(event.delta.thinking for event in events[2:-4])
    assert streamed.signature == events[-4].delta.signature
    assert again.input_tokens > without.input_tokens


@bounded(120)
async def test_thinking_shown_as_omitted_has_its_signature_only(server):
    thinking = {"type": "enabled", "budget_tokens": 1024, "display": "omitted"}
    async with _sdk(server) as sdk:
        message = await sdk.messages.create(model="demo", max_tokens=10, messages=HELLO, thinking=thinking)
        events = [event async for event in await sdk.messages.create(model="demo", max_tokens=10, messages=HELLO, thinking=thinking, stream=True)]
    (block,) = message.content
    assert block.type == "thinking" and block.thinking == "" and block.signature
    assert [event.delta.type for event in events if event.type == "content_block_delta"] == ["signature_delta"]


@bounded(120)
async def test_a_real_claude_code_request_is_accepted_whole(client):
    """Claude Code's own request (a tool result's turn), every field as it sent them: read, translated and
    counted; generating needs a context the demo model does not have, and the error says so Claude Code's way."""
    capture = json.loads((Path(__file__).parent / "captures" / "claude-code.json").read_text())
    body = {**capture["body"], "model": "demo"}
    counted = await client.post("/v1/messages/count_tokens?beta=true", json={k: v for k, v in body.items() if k not in ("max_tokens", "stream")}, headers=capture["headers"])
    assert counted.status_code == 200, counted.text
    MessageTokensCount.model_validate(counted.json(), strict=True)
    assert counted.json()["input_tokens"] > 4096
    refused = await client.post(capture["path"], json=body, headers=capture["headers"])
    assert refused.status_code == 400
    _error(refused.json(), "invalid_request_error")
    assert refused.json()["error"]["message"].startswith(f"prompt is too long: This model's maximum context length is 4096 tokens. However, your messages resulted in {counted.json()['input_tokens']} tokens")


def test_the_translation_into_one_generation_request():
    """What the model is given: the tools shown, the calls allowed, the messages in the template's roles and order."""
    limits = RequestLimits(max_tokens=100, max_choices=16, grammar_max_bytes=65536)

    def translate(**fields: object):  # noqa: ANN202
        request = msgspec.json.decode(json.dumps({"model": "demo", "max_tokens": 1000, "messages": HELLO, **fields}), type=MessagesRequest)
        request.validate(limits)
        return generation_request(request, limits)

    deferred = {**TIME, "defer_loading": True}
    one = translate(tools=[WEATHER, deferred], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert one.max_tool_calls == 1 and one.parse_tool_calls and one.params.max_tokens == 100 and one.params.fit_context
    assert [tool["function"]["name"] for tool in json.loads(one.tools)] == ["get_weather"]
    assert one.thinking is False and one.forced_tool_choice is None and one.params.grammar is None
    none = translate(tools=[WEATHER], tool_choice={"type": "none"})
    assert none.tools is None and not none.parse_tool_calls
    forced = translate(tools=[WEATHER, TIME], tool_choice={"type": "any"}, thinking={"type": "adaptive"})
    assert forced.params.grammar.syntax == "json_tool_call" and forced.forced_tool_choice and forced.thinking is False
    assert translate(thinking={"type": "adaptive"}).thinking is None and translate(thinking={"type": "enabled", "budget_tokens": 9}).thinking is True
    turn = translate(
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=1"}, {"type": "text", "text": "Be brief."}],
        tools=[WEATHER, deferred],
        messages=[
            *HELLO,
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "redacted_thinking", "data": "x"},
                                              {"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}, {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": "down"},
                                         {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "tool_reference", "tool_name": "get_time"}]}]},
        ],
    )
    assert [(message.role, message.content) for message in turn.messages] == [
        ("system", "Be brief."), ("user", "Hello there"), ("assistant", "Let me look."), ("tool", "Error: down"), ("tool", ""), ("user", "Thanks.")
    ]
    assistant = turn.messages[2]
    assert assistant.reasoning == "hmm" and assistant.tool_calls == (p.ToolCall("get_weather", '{"city":"Oslo"}', "toolu_1"),)
    assert [message.tool_call_id for message in turn.messages[3:5]] == ["toolu_1", "toolu_2"]
    # A tool_reference shows the deferred tool from then on.
    assert [tool["function"]["name"] for tool in json.loads(turn.tools)] == ["get_weather", "get_time"]


@bounded(60)
async def test_metrics_and_request_ids_name_the_surface(client, admin):
    answered = await client.post("/v1/messages", json={"model": "demo", "max_tokens": 2, "messages": HELLO}, headers={"X-Request-Id": "claude-1"})
    refused = await client.post("/v1/messages/count_tokens", json={"model": "demo"})
    assert answered.headers["X-Request-Id"] == "claude-1" and refused.json()["request_id"] == refused.headers["X-Request-Id"]
    samples = {}
    for family in text_string_to_metric_families((await admin.get("/metrics")).text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def requests(endpoint: str, status: str) -> float:
        labels = {"surface": "anthropic", "endpoint": endpoint, "model": "demo" if status == "200" else "", "status": status}
        return samples.get(("mlxtrio_requests_total", tuple(sorted(labels.items()))), 0.0)

    assert requests("/v1/messages", "200") == 1 and requests("/v1/messages/count_tokens", "400") == 1
