"""response_format against the real server: schema-valid JSON from the demo model, and clear 400s."""

from __future__ import annotations

import json

import jsonschema
import pytest

from ..helpers import bounded, sse_events

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "sunny": {"type": "boolean"},
        "wind": {"enum": ["calm", "breezy", "stormy"]},
    },
    "required": ["city", "sunny", "wind"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}


def _chat(response_format: dict, **extra: object) -> dict:
    return {
        "model": "demo",
        "messages": [{"role": "user", "content": "What is the weather like?"}],
        "response_format": response_format,
        "max_tokens": 400,
        "temperature": 1.0,
        "seed": 1,
        **extra,
    }


@bounded(60)
async def test_json_schema_is_enforced(client, openapi):
    response = await client.post("/v1/chat/completions", json=_chat(FORMAT, n=2))
    assert response.status_code == 200, response.text
    openapi.validate(response.json(), "CreateChatCompletionResponse")
    for choice in response.json()["choices"]:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


@bounded(60)
async def test_json_schema_streams_valid_json(client, openapi):
    response = await client.post("/v1/chat/completions", json=_chat(FORMAT, stream=True, seed=5))
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        openapi.validate(event, "CreateChatCompletionStreamResponse")
    text = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1] if event["choices"])
    jsonschema.validate(json.loads(text), SCHEMA)


@bounded(60)
async def test_json_object_gives_an_object(client):
    # Free-form objects have unbounded strings: random weights may run to max_tokens (finish_reason
    # "length", as OpenAI's own). Every one that stops is an object, and most stop.
    finished = 0
    for seed in range(6):
        choice = (await client.post("/v1/chat/completions", json=_chat({"type": "json_object"}, seed=seed))).json()["choices"][0]
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["message"]["content"]), dict)
            finished += 1
        else:
            assert choice["finish_reason"] == "length" and choice["message"]["content"].startswith("{")
    assert finished >= 3


@bounded(60)
async def test_a_vanishing_temperature_decodes_greedily_under_a_grammar(client):
    # Found by hypothesis (test_hostile_input): 1/4.2e-213 is infinite in float32,
    # so sampling weighed every token -inf or NaN and drew one the grammar forbids (a 500).
    def body(temperature: float) -> dict:
        return {
            "model": "demo",
            "messages": [{"role": "system", "content": ""}],
            "response_format": {"type": "json_object"},
            "temperature": temperature,
            "max_tokens": 24,
        }

    greedy = await client.post("/v1/chat/completions", json=body(0))
    assert greedy.status_code == 200, greedy.text
    for temperature in (4.2272985961920776e-213, 1e-300, 5e-324):
        response = await client.post("/v1/chat/completions", json=body(temperature))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]


@pytest.mark.parametrize(
    ("response_format", "param", "words"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}},
            "response_format.json_schema.schema",
            ["uniqueItems"],
        ),
        ({"type": "json_schema", "json_schema": {"name": "n", "schema": {"not": {"type": "string"}}}}, "response_format.json_schema.schema", ["not"]),
        ({"type": "json_schema", "json_schema": {"name": "n", "schema": [1, 2]}}, "response_format.json_schema.schema", ["schema"]),
        ({"type": "json_schema", "json_schema": {"name": "no spaces", "schema": {}}}, "response_format.json_schema.name", ["name"]),
        ({"type": "json_schema"}, "response_format.json_schema", ["json_schema"]),
        ({"type": "yaml"}, "response_format.type", ["yaml"]),
    ],
)
@bounded(30)
async def test_what_cannot_be_enforced_is_a_400_that_says_what(client, openapi, response_format, param, words):
    response = await client.post("/v1/chat/completions", json=_chat(response_format))
    assert response.status_code == 400, response.text
    openapi.validate(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert error["param"] == param
    for word in words:
        assert word in error["message"]
