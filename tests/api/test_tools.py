"""Tool calling through the real server: forced calls from the demo model, parsing, the schema, and 400s."""

from __future__ import annotations

import json

import jsonschema
import pytest

from ..helpers import bounded, sse_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]


def _chat(**extra: object) -> dict:
    return {"model": "demo", "messages": QUESTION, "tools": [WEATHER, TIME], "max_tokens": 300, "temperature": 1.0, "seed": 2, **extra}


def _arguments_valid(call: dict) -> None:
    tool = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
    jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])


@bounded(60)
async def test_a_named_function_is_called(client, openapi):
    body = _chat(tool_choice={"type": "function", "function": {"name": "get_weather"}}, n=2)
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    openapi.validate(response.json(), "CreateChatCompletionResponse")
    for choice in response.json()["choices"]:
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        _arguments_valid(call)


@bounded(60)
async def test_required_calls_one_of_the_tools_and_streams_tool_call_deltas(client, openapi):
    response = await client.post("/v1/chat/completions", json=_chat(tool_choice="required", stream=True))
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    calls = []
    for event in events[:-1]:
        openapi.validate(event, "CreateChatCompletionStreamResponse")
        calls.extend(event["choices"][0]["delta"].get("tool_calls", []))
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert [call["index"] for call in calls] == [0]
    _arguments_valid(calls[0])


@bounded(60)
async def test_auto_and_none_answer_in_text_when_the_model_calls_nothing(client, openapi):
    # Random weights do not write <tool_call> by themselves: the answer is text.
    for choice in ("auto", "none"):
        response = await client.post("/v1/chat/completions", json=_chat(tool_choice=choice, max_tokens=8))
        assert response.status_code == 200, response.text
        openapi.validate(response.json(), "CreateChatCompletionResponse")
        message = response.json()["choices"][0]["message"]
        assert "tool_calls" not in message and isinstance(message["content"], str)


@bounded(60)
async def test_a_conversation_with_tool_results_continues(client, openapi):
    messages = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "C"}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 and snowing"},
    ]
    response = await client.post("/v1/chat/completions", json=_chat(messages=messages, max_tokens=8))
    assert response.status_code == 200, response.text
    openapi.validate(response.json(), "CreateChatCompletionResponse")
    # The earlier call and its result are in the prompt the model saw.
    plain = await client.post("/v1/chat/completions", json=_chat(max_tokens=8))
    assert response.json()["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"] + 10


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [], "tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "x", "parameters": {"type": "array", "uniqueItems": True}}}], "tool_choice": "required"},
            "tools",
        ),
    ],
)
@bounded(30)
async def test_bad_tools_are_400s(client, openapi, extra, param):
    response = await client.post("/v1/chat/completions", json=_chat(**extra))
    assert response.status_code == 400, response.text
    openapi.validate(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param


@bounded(60)
async def test_without_parallel_calls_the_answer_ends_at_the_first_call(client, admin, openapi):
    body = _chat(tool_choice="required", parallel_tool_calls=False)
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    openapi.validate(response.json(), "CreateChatCompletionResponse")
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and len(choice["message"]["tool_calls"]) == 1
    # The sequence left the batch when its call closed: nothing is left running in the worker.
    assert [worker["active_sequences"] for worker in (await admin.get("/admin/health")).json()["workers"]] == [0]
