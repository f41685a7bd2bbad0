"""Hostile and malformed input, generated: every answer is a 2xx or an OpenAI-shaped 4xx, never a 5xx.

Hypothesis builds bodies field by field, mixing plausible values with arbitrary
JSON, and sends them to the real server; after each run the server must still
be healthy and serve a normal request. Hypothesis drives a blocking client in
a worker thread while the server runs in the test's Trio loop.
"""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ..helpers import bounded
from .conftest import sse_events

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def either(valid: st.SearchStrategy, edge: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Mostly valid values (so that requests get far), sometimes edge cases, sometimes any JSON at all."""
    choices = [valid] * 16 + [valid if edge is None else edge] * 2 + [json_values]
    return st.integers(0, len(choices) - 1).flatmap(choices.__getitem__)


def floats(low: float, high: float) -> st.SearchStrategy:
    return st.floats(low, high, allow_nan=False)


ROLES = st.sampled_from(["system", "developer", "user", "assistant"])
MESSAGE = st.fixed_dictionaries(
    {"role": either(ROLES, st.sampled_from(["tool", "robot", "", "USER"]))},
    optional={
        "content": either(
            st.text(max_size=40),
            st.lists(st.fixed_dictionaries({"type": either(st.just("text"), st.text(max_size=8)), "text": either(st.text(max_size=20))}), max_size=2),
        ),
        "name": either(st.text(max_size=10)),
    },
)
COMMON = {
    "max_tokens": either(st.integers(1, 6), st.integers(-(2**70), 2**70)),
    "temperature": either(floats(0, 2), floats(-1e308, 1e308)),
    "top_p": either(floats(0.01, 1), floats(-1, 2)),
    "top_k": either(st.integers(0, 50), st.integers(-5, 2**40)),
    "min_p": either(floats(0, 1), floats(-1, 2)),
    "n": either(st.integers(1, 4), st.integers(-5, 2**40)),
    "stop": either(st.text(min_size=1, max_size=5) | st.lists(st.text(min_size=1, max_size=5), max_size=4), st.lists(st.text(max_size=600), max_size=6)),
    "seed": either(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**80), 2**80)),
    "stream": either(st.booleans()),
    "stream_options": either(st.fixed_dictionaries({"include_usage": either(st.booleans())})),
    "presence_penalty": either(floats(-2, 2), floats(-10, 10)),
    "frequency_penalty": either(floats(-2, 2), floats(-10, 10)),
    "repetition_penalty": either(floats(0.5, 2), floats(-1, 20)),
    "logit_bias": either(
        st.dictionaries(st.sampled_from(["0", "1", "5", "200"]), floats(-100, 100), max_size=3),
        st.dictionaries(st.sampled_from(["-1", "abc", "99999999", "1e3", ""]), floats(-1e9, 1e9), max_size=3),
    ),
    "ignore_eos": either(st.booleans()),
}
CHAT_BODIES = st.fixed_dictionaries(
    {"model": either(st.just("demo"), st.text(max_size=10)), "messages": either(st.lists(MESSAGE, min_size=1, max_size=3), st.just([]))},
    optional={
        **COMMON,
        "logprobs": either(st.booleans()),
        "top_logprobs": either(st.integers(0, 20), st.integers(-5, 100)),
        "max_completion_tokens": either(st.integers(1, 6), st.integers(-5, 2**40)),
        "response_format": either(
            st.sampled_from(
                [
                    {"type": "text"},
                    {"type": "json_object"},
                    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "boolean"}}}}},
                ]
            ),
            st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "json_object", "xml"]), "json_schema": json_values}),
        ),
    },
)
COMPLETION_BODIES = st.fixed_dictionaries(
    {"model": either(st.just("demo"), st.text(max_size=10)), "prompt": either(st.text(min_size=1, max_size=40), st.just(""))},
    optional={**COMMON, "logprobs": either(st.integers(0, 5), st.integers(-5, 100))},
)
# Requests that get through are short: every one is capped at 6 tokens.
pytestmark = pytest.mark.parametrize("server_settings", [{"max_tokens_limit": 6, "max_choices": 4}])
MODEL_IDS = st.lists(
    st.sampled_from(["..", ".", "/", "~", "etc", "passwd", "demo", "models--x", "%2e%2e", "file:", "http://h", "\\", "\x00", "snapshots"]),
    min_size=1,
    max_size=6,
).map("".join) | st.text(max_size=30)


def _check(client: httpx.Client, openapi, path: str, content: bytes) -> None:  # noqa: ANN001
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 404, 413), (content[:200], response.status_code, response.text[:300])
    if response.status_code != 200:
        openapi.validate(response.json(), "ErrorResponse")
        assert response.json()["error"]["message"]
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = sse_events(response.text)
        # A stream that began ends with [DONE], or with an error event: never silently.
        assert events[-1] == "[DONE]" or "error" in events[-1], events[-3:]
    else:
        assert response.json()["choices"]


def _hostile_runs(base_url: str, openapi) -> None:  # noqa: ANN001
    with httpx.Client(base_url=base_url, timeout=30) as client:

        @settings(max_examples=120, deadline=None, database=None)
        @given(body=CHAT_BODIES)
        def chat(body: dict) -> None:
            _check(client, openapi, "/v1/chat/completions", json.dumps(body).encode())

        @settings(max_examples=120, deadline=None, database=None)
        @given(body=COMPLETION_BODIES)
        def completion(body: dict) -> None:
            _check(client, openapi, "/v1/completions", json.dumps(body).encode())

        @settings(max_examples=60, deadline=None, database=None)
        @given(raw=st.binary(max_size=200) | json_values.map(lambda value: json.dumps(value).encode()))
        def raw_bodies(raw: bytes) -> None:
            for path in ("/v1/chat/completions", "/v1/completions"):
                _check(client, openapi, path, raw)

        @settings(max_examples=60, deadline=None, database=None)
        @given(model=MODEL_IDS)
        def model_ids(model: str) -> None:
            response = client.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 1})
            if model == "demo":
                assert response.status_code == 200
                return
            assert response.status_code in (400, 404), (model, response.text)
            openapi.validate(response.json(), "ErrorResponse")

        for run in (chat, completion, raw_bodies, model_ids):
            run()


@bounded(280)
async def test_generated_bodies_and_model_ids(server, client, openapi):
    await trio.to_thread.run_sync(_hostile_runs, server.openai_url, openapi)
    assert (await client.get("/health")).status_code == 200
    response = await client.post("/v1/completions", json={"model": "demo", "prompt": "hi", "max_tokens": 2})
    assert response.status_code == 200, response.text
