"""Issue 22, items 1-3: a schema's cost is the requester's to choose, so the orchestrator never compiles one.

Schemas that once killed the orchestrator (an array nested 30 deep: a regex of
gigabytes) or froze a model (a top-level string of at most 20 characters:
minutes of indexing in the decode loop) against the real server: each is
answered quickly, the server stays healthy, and a stream of the same model
running beside them is not stalled.
"""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI, BadRequestError
from pydantic import BaseModel, Field

from ..helpers import bounded, sse_events


def nested_arrays(depth: int) -> dict:
    node: dict = {"type": "string"}
    for _ in range(depth):
        node = {"type": "array", "items": node}
    return node


def _chat(schema: dict, **extra: object) -> dict:
    return {
        "model": "demo",
        "messages": [{"role": "user", "content": "JSON please"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        "max_tokens": 30,
        "seed": 1,
        **extra,
    }


async def _longest_gap_of_a_stream(client: httpx.AsyncClient, tokens: int, gaps: list[float], started: trio.Event) -> None:
    """Stream ``tokens`` tokens and record the longest wait between two chunks."""
    body = {"model": "demo", "messages": [{"role": "user", "content": "go"}], "max_tokens": tokens, "ignore_eos": True, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        last = None
        async for _ in response.aiter_bytes():
            now = time.monotonic()
            if last is None:
                started.set()
            else:
                gaps.append(now - last)
            last = now


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(nested_arrays(30), id="arrays-nested-30"),
        pytest.param({"type": "string", "maxLength": 20}, id="string-maxLength-20"),
        pytest.param({"type": "string", "minLength": 20}, id="string-minLength-20"),
    ],
)
@bounded(60)
async def test_schema_bombs_are_cheap_and_stall_no_stream(client, schema):
    gaps: list[float] = []
    started = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_longest_gap_of_a_stream, client, 300, gaps, started)
        await started.wait()
        began = time.monotonic()
        response = await client.post("/v1/chat/completions", json=_chat(schema))
        assert time.monotonic() - began < 5
        assert response.status_code == 200, response.text
        health = await client.get("/health")
        assert health.status_code == 200
    assert max(gaps) < 1.0
    choice = response.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)


@bounded(30)
async def test_a_schema_over_the_size_limit_is_a_400_before_any_work(client):
    wide = {"type": "object", "properties": {f"property_{i}": {"type": "string"} for i in range(40_000)}}  # about 1.1 MB
    response = await client.post("/v1/chat/completions", json=_chat(wide))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "grammar_too_large"
    assert error["param"] == "response_format.json_schema.schema"
    assert "MLX_GRAMMAR_MAX_BYTES" in error["message"]


@pytest.mark.parametrize("server_settings", [{"grammar_compile_timeout": 0.001}])
@bounded(60)
async def test_a_schema_past_the_compile_timeout_is_a_400_naming_the_limit(client):
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}
    response = await client.post("/v1/chat/completions", json=_chat(wide))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "grammar_timeout"
    assert "MLX_GRAMMAR_COMPILE_TIMEOUT" in error["message"]
    # The worker is fine, and free text still flows.
    plain = await client.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert plain.status_code == 200


@bounded(60)
async def test_a_schema_the_worker_refuses_is_a_400_before_the_stream_starts(client, openapi):
    schema = {"type": "array", "uniqueItems": True}
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json=_chat(schema, stream=stream))
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/json")
        openapi.validate(response.json(), "ErrorResponse")
        error = response.json()["error"]
        assert error["param"] == "response_format.json_schema.schema"
        assert "uniqueItems" in error["message"]


class Rating(BaseModel):
    stars: int = Field(ge=1, le=5)
    score: float = Field(ge=0, le=1)
    label: str = Field(max_length=8)


@bounded(60)
async def test_pydantic_bounds_work_through_the_sdks_parse(server):
    # Field(ge=..., le=...) makes minimum/maximum, which outlines-core could not enforce (a 400 before).
    async with AsyncOpenAI(base_url=f"{server.openai_url}/v1", api_key="unused", max_retries=0) as client:
        parsed = 0
        for seed in range(3):
            completion = await client.chat.completions.parse(
                model="demo",
                messages=[{"role": "user", "content": "rate it"}],
                response_format=Rating,
                max_tokens=120,
                seed=seed,
            )
            choice = completion.choices[0]
            if choice.finish_reason == "stop":
                rating = choice.message.parsed
                assert 1 <= rating.stars <= 5 and 0 <= rating.score <= 1 and len(rating.label) <= 8
                parsed += 1
        # Not a test of nothing: most seeds finish their object.
        assert parsed >= 1
        with pytest.raises(BadRequestError, match="uniqueItems"):
            await client.chat.completions.create(
                model="demo",
                messages=[{"role": "user", "content": "x"}],
                response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "array", "uniqueItems": True}}},
                stream=True,
            )


@bounded(60)
async def test_streamed_constrained_output_still_streams(client):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 9}}, "required": ["a"], "additionalProperties": False}
    response = await client.post("/v1/chat/completions", json=_chat(schema, stream=True, max_tokens=40))
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    text = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1] if event["choices"])
    jsonschema.validate(json.loads(text), schema)


# Schemas built keyword by keyword, deep and wide, with lengths, bounds and
# patterns (valid or not): every answer is a 200 or a 400 naming the field, and
# each comes back in bounded time.
_LEAVES = st.one_of(
    st.fixed_dictionaries({"type": st.just("string")}, optional={"maxLength": st.integers(-2, 40), "minLength": st.integers(-2, 40), "pattern": st.text(max_size=12), "format": st.sampled_from(["date-time", "email", "uuid", "hostname", "nope"])}),
    st.fixed_dictionaries({"type": st.sampled_from(["integer", "number"])}, optional={"minimum": st.integers(-50, 50), "maximum": st.integers(-50, 50), "multipleOf": st.integers(-2, 7), "exclusiveMinimum": st.floats(-5, 5)}),
    st.fixed_dictionaries({"enum": st.lists(st.text(max_size=5) | st.integers(), max_size=4)}),
    st.fixed_dictionaries({"const": st.text(max_size=5)}),
    st.sampled_from([{"type": "boolean"}, {"type": "null"}, {}, True, False, {"uniqueItems": True}, {"not": {}}, {"type": "nonsense"}]),
)
SCHEMAS = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.fixed_dictionaries({"type": st.just("array"), "items": children}, optional={"minItems": st.integers(-1, 5), "maxItems": st.integers(-1, 5)}),
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=6), children, max_size=5)},
            optional={"required": st.lists(st.text(max_size=6), max_size=3), "additionalProperties": st.booleans() | children},
        ),
        st.fixed_dictionaries({"anyOf": st.lists(children, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"$defs": st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2), "$ref": st.sampled_from(["#/$defs/a", "#/$defs/b", "#", "#/nowhere", "http://x/y"])}),
    ),
    max_leaves=24,
)


def _schema_runs(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:

        @settings(max_examples=80, deadline=None, database=None)
        @given(schema=SCHEMAS, stream=st.booleans())
        def schemas(schema: object, stream: bool) -> None:
            began = time.monotonic()
            response = client.post("/v1/chat/completions", json={**_chat({}, max_tokens=8, stream=stream), "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})
            assert time.monotonic() - began < 10
            assert response.status_code in (200, 400), (schema, response.status_code, response.text[:300])
            if response.status_code == 400:
                assert response.json()["error"]["param"].startswith("response_format"), response.text
            elif stream:
                assert sse_events(response.text)[-1] == "[DONE]"

        schemas()


@bounded(240)
async def test_generated_schemas_get_a_200_or_a_400_naming_the_field(server, client):
    await trio.to_thread.run_sync(_schema_runs, server.openai_url)
    assert (await client.get("/health")).status_code == 200
