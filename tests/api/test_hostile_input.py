"""Hostile and malformed input, generated: every answer is a 2xx or an OpenAI-shaped 4xx, never a 5xx.

Hypothesis builds bodies field by field, mixing plausible values with arbitrary
JSON, and sends them to the real server; after each run the server must still
be healthy and serve a normal request. Hypothesis drives a blocking client in
a worker thread while the server runs in the test's Trio loop.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ..helpers import bounded, sse_events

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
# A call's arguments are text: JSON or not, and nested past what json.loads takes (a 500 in the worker once).
ARGUMENTS = st.sampled_from(["{}", '{"city": "Oslo"}']) | st.text(max_size=20) | st.integers(1, 1500).map(lambda depth: "[" * depth + "]" * depth)
TOOL_CALLS = st.lists(
    st.fixed_dictionaries(
        {"id": st.text(max_size=8), "type": st.just("function"), "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "get_weather"]), "arguments": ARGUMENTS})}
    ),
    min_size=1,
    max_size=2,
)
MESSAGE = st.fixed_dictionaries(
    {"role": either(ROLES, st.sampled_from(["tool", "robot", "", "USER"]))},
    optional={
        "content": either(
            st.text(max_size=40),
            st.lists(st.fixed_dictionaries({"type": either(st.just("text"), st.text(max_size=8)), "text": either(st.text(max_size=20))}), max_size=2),
        ),
        "name": either(st.text(max_size=10)),
        "tool_calls": either(TOOL_CALLS),
    },
)
# logit_bias keys as clients may spell token ids, and as no one should: any text, other scripts' digits
# (int() reads "\u0663" as 3 and refuses "\u00b2"), past int64 and past int()'s 4,300 digits.
TOKEN_KEYS = (
    st.integers(0, 511).map(str)
    | st.text(max_size=12)
    | st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4)
    | st.integers(2**31 - 2, 10**30).map(str)
    | st.integers(300, 6000).map(lambda digits: "9" * digits)
    | st.sampled_from(["\u00b2", "\u0663", "\uff13", " 3", "+3", "-1", "1e3", "0x1f", ""])
)
# keep_alive that keeps the demo loaded (0 would unload it between examples), and durations that are not.
KEEP_ALIVE = st.sampled_from([-1, 300, "5m", "-1s", "1h30m"]) | st.integers(300, 400).map(lambda digits: "9" * digits + "h") | st.sampled_from(["\u0663h", "\uff15m", "5 m"])
COMMON = {
    "max_tokens": either(st.integers(1, 6), st.integers(-(2**70), 2**70)),
    "temperature": either(floats(0, 2), floats(-1e308, 1e308)),
    "top_p": either(floats(0.01, 1), floats(-1, 2)),
    "top_k": either(st.integers(0, 50), st.integers(-(2**80), 2**80)),
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
        st.dictionaries(TOKEN_KEYS, floats(-1e9, 1e9), max_size=3),
    ),
    "keep_alive": either(KEEP_ALIVE),
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
# Every number and id that reaches the worker, on an otherwise plain request: one out of range is a 400.
SAMPLING = st.fixed_dictionaries(
    {},
    optional={
        "top_k": st.integers(0, 50) | st.integers(-(2**80), 2**80),
        "logit_bias": st.dictionaries(TOKEN_KEYS, floats(-100, 100), max_size=3),
        "seed": st.integers(-(2**63), 2**63 - 1) | st.integers(-(2**80), 2**80),
        "n": st.integers(1, 4),
        "keep_alive": KEEP_ALIVE,
    },
)
# Invalid UTF-8 put where MARK is, in strings of every place (a 500 once: msgspec raised UnicodeDecodeError).
MARK = "\ue000"
INVALID_UTF8 = st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc0\xaf"])
_USER = {"role": "user", "content": "hi"}
UTF8_TARGETS = {
    "model": ({"model": f"de{MARK}mo", "messages": [_USER]}, "model"),
    "content": ({"model": "demo", "messages": [_USER, {"role": "user", "content": f"a{MARK}b"}]}, "messages[1].content"),
    "part": ({"model": "demo", "messages": [{"role": "user", "content": [{"type": "text", "text": MARK}]}]}, "messages[0].content[0].text"),
    "role": ({"model": "demo", "messages": [{"role": f"user{MARK}", "content": "x"}]}, "messages[0].role"),
    "stop": ({"model": "demo", "messages": [_USER], "stop": ["x", MARK]}, "stop[1]"),
    "prompt": ({"model": "demo", "prompt": f"say {MARK}"}, "prompt"),
    "escapes before": ({"model": "demo", "prompt": f'\\"\\\\{MARK}'}, "prompt"),
    # A key is no field: named by its object.
    "logit_bias key": ({"model": "demo", "prompt": "x", "logit_bias": {MARK: 1}}, None),
}
MODEL_IDS = st.lists(
    st.sampled_from(["..", ".", "/", "~", "etc", "passwd", "demo", "models--x", "%2e%2e", "file:", "http://h", "\\", "\x00", "snapshots"]),
    min_size=1,
    max_size=6,
).map("".join) | st.text(max_size=30)


def _must_refuse(body: object) -> bool:
    """Whether the body asks for something the server must refuse, whatever else it holds: a message
    without the content its role needs (OpenAI's OpenAPI description), a logit_bias key that is not a
    token id in ASCII digits within int32, a top_k past that, a keep_alive in other scripts' digits."""
    if not isinstance(body, dict):
        return False
    for message in body.get("messages") if isinstance(body.get("messages"), list) else ():
        if isinstance(message, dict) and message.get("content") in (None, []):
            if message.get("role") in ("system", "developer", "user", "tool") or (
                message.get("role") == "assistant" and not message.get("tool_calls")
            ):
                return True
    bias = body.get("logit_bias")
    if isinstance(bias, dict) and any(not re.fullmatch("[0-9]{1,10}", key) or int(key) >= 2**31 for key in bias):
        return True
    top_k = body.get("top_k")
    if type(top_k) is int and not 0 <= top_k < 2**31:
        return True
    keep_alive = body.get("keep_alive")
    return isinstance(keep_alive, str) and any(char.isdigit() and not char.isascii() for char in keep_alive)


def _check(client: httpx.Client, openapi, path: str, content: bytes, *, refuse: bool = False) -> None:  # noqa: ANN001
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 404, 413), (content[:200], response.status_code, response.text[:300])
    if refuse:
        assert response.status_code == 400, (content[:200], response.status_code, response.text[:300])
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
            _check(client, openapi, "/v1/chat/completions", json.dumps(body).encode(), refuse=_must_refuse(body))

        @settings(max_examples=120, deadline=None, database=None)
        @given(body=COMPLETION_BODIES)
        def completion(body: dict) -> None:
            _check(client, openapi, "/v1/completions", json.dumps(body).encode(), refuse=_must_refuse(body))

        @settings(max_examples=120, deadline=None, database=None)
        @given(sampling=SAMPLING, chat_api=st.booleans())
        def sampling_fields(sampling: dict, chat_api: bool) -> None:
            body = {"model": "demo", "max_tokens": 2, **sampling, **({"messages": [_USER]} if chat_api else {"prompt": "x"})}
            path = "/v1/chat/completions" if chat_api else "/v1/completions"
            _check(client, openapi, path, json.dumps(body).encode(), refuse=_must_refuse(body))

        @settings(max_examples=60, deadline=None, database=None)
        @given(target=st.sampled_from(list(UTF8_TARGETS)), bad=INVALID_UTF8, text=st.text(max_size=10))
        def invalid_utf8(target: str, bad: bytes, text: str) -> None:
            body, param = UTF8_TARGETS[target]
            escaped = json.dumps(text, ensure_ascii=False)[1:-1]
            content = json.dumps(body, ensure_ascii=False).replace(MARK, escaped + MARK).encode().replace(MARK.encode(), bad)
            response = client.post(
                "/v1/completions" if "prompt" in body else "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (content[:200], response.status_code, response.text[:300])
            openapi.validate(response.json(), "ErrorResponse")
            assert response.json()["error"]["param"] == param, (content[:200], response.json())

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

        for run in (chat, completion, sampling_fields, invalid_utf8, raw_bodies, model_ids):
            run()


@bounded(280)
async def test_generated_bodies_and_model_ids(server, client, openapi):
    await trio.to_thread.run_sync(_hostile_runs, server.openai_url, openapi)
    assert (await client.get("/health")).status_code == 200
    response = await client.post("/v1/completions", json={"model": "demo", "prompt": "hi", "max_tokens": 2})
    assert response.status_code == 200, response.text


# Each of these was a 500 with a traceback, or silently read as something else (issue 22, item 11).
USER = {"role": "user", "content": "hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
REFUSED_BODIES = [
    # Invalid UTF-8 inside a JSON string (docs/SECURITY.md: a 400).
    (b'{"model":"demo","messages":[{"role":"user","content":"\xff\xfe"}]}', "messages[0].content"),
    (b'{"model":"demo","messages":[{"role":"user","content":"ok"},{"role":"user","content":"a\xc3"}]}', "messages[1].content"),
    (b'{"model":"de\xffmo","prompt":"x"}', "model"),
    # Token ids: ASCII digits only, within range (int() takes "\xb2" and Arabic-Indic digits, and
    # refuses past 4300 digits; msgpack past 64 bits).
    ({"logit_bias": {"9" * 400: 1}}, "logit_bias"),
    ({"logit_bias": {"1" * 5000: 1}}, "logit_bias"),
    ({"logit_bias": {"\u00b2": 1}}, "logit_bias"),
    ({"logit_bias": {"\u0663": 1}}, "logit_bias"),
    ({"logit_bias": {"\uff13": 1}}, "logit_bias"),
    ({"logit_bias": {" 3": 1}}, "logit_bias"),
    ({"logit_bias": {"+3": 1}}, "logit_bias"),
    ({"logit_bias": {str(2**31): 1}}, "logit_bias"),
    ({"logit_bias": {str(index): 1 for index in range(400)}}, "logit_bias"),
    ({"top_k": 10**30}, "top_k"),
    ({"top_k": 2**31}, "top_k"),
    ({"keep_alive": "9" * 400 + "h"}, "keep_alive"),
    # Content: required for every role but an assistant's turn that calls tools (OpenAI's OpenAPI description).
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "system"}, USER]}, "messages[0].content"),
    ({"messages": [{"role": "developer"}, USER]}, "messages[0].content"),
    ({"messages": [USER, {"role": "assistant"}, USER]}, "messages[1].content"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_1"}]}, "messages[2].content"),
]


@bounded(120)
async def test_inputs_that_were_500s_are_400s_naming_the_field(server, client, openapi):
    wrong = []
    for body, param in REFUSED_BODIES:
        if isinstance(body, dict):
            body = json.dumps({"model": "demo", "messages": [USER], "max_tokens": 2, **body}).encode()
        path = "/v1/completions" if b'"prompt"' in body else "/v1/chat/completions"
        response = await client.post(path, content=body, headers={"content-type": "application/json"})
        if response.status_code != 400 or response.json()["error"]["param"] != param:
            wrong.append(f"{body[:70]!r}: {response.status_code} {response.text[:120]}")
            continue
        openapi.validate(response.json(), "ErrorResponse")
    assert not wrong, "\n".join(wrong)
    # What OpenAI allows still works: an assistant turn with tool calls and no content, and a
    # call's arguments that are not JSON (or nested past what json.loads takes) kept as text.
    for arguments in ("{}", "not json", "[" * 1200 + "]" * 1200):
        call = {**CALL, "function": {"name": "f", "arguments": arguments}}
        messages = [USER, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "call_1", "content": "1"}]
        response = await client.post("/v1/chat/completions", json={"model": "demo", "messages": messages, "max_tokens": 2})
        assert response.status_code == 200, (arguments[:20], response.text[:300])
    accepted = await client.post(
        "/v1/completions", json={"model": "demo", "prompt": "x", "max_tokens": 2, "top_k": 2**31 - 1, "logit_bias": {"0007": 1}}
    )
    assert accepted.status_code == 200, accepted.text
    assert (await client.get("/health")).status_code == 200
