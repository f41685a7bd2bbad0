"""Without max_tokens a request generates up to the end of the context (capped by MLX_MAX_TOKENS), as vLLM does."""

from __future__ import annotations

import re

from ..helpers import bounded, sse_events

# The demo model's context (its max_position_embeddings).
CONTEXT = 4096
# The byte-level pre-tokenizer splits at spaces, so a prompt of k words has a + b * k tokens.
WORD = " hello"


def _body(path: str, words: int, **fields: object) -> dict:
    text = WORD * words
    prompt = {"prompt": text} if path == "/v1/completions" else {"messages": [{"role": "user", "content": text}]}
    return {"model": "demo", **prompt, "temperature": 0, **fields}


async def _prompt_tokens(client, path: str, words: int) -> int:  # noqa: ANN001
    response = await client.post(path, json=_body(path, words, max_tokens=1))
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens"]


async def _words_for(client, path: str, tokens: int) -> int:  # noqa: ANN001
    """How many words make a prompt of about ``tokens`` tokens (at most that many)."""
    few, more = await _prompt_tokens(client, path, 100), await _prompt_tokens(client, path, 200)
    per_word = (more - few) / 100
    return 100 + int((tokens - few) / per_word)


async def _answer(client, path: str, body: dict) -> tuple[int, dict, str | None]:  # noqa: ANN001
    """A request's status, usage and finish reason, streamed or not."""
    if not body.get("stream"):
        response = await client.post(path, json=body)
        if response.status_code != 200:
            return response.status_code, response.json(), None
        return 200, response.json()["usage"], response.json()["choices"][0]["finish_reason"]
    async with client.stream("POST", path, json={**body, "stream_options": {"include_usage": True}}) as response:
        if response.status_code != 200:
            return response.status_code, {}, None
        events = sse_events((await response.aread()).decode())
    assert events[-1] == "[DONE]"
    reasons = [choice["finish_reason"] for event in events[:-1] for choice in event["choices"] if choice["finish_reason"]]
    return 200, events[-2]["usage"], reasons[-1]


@bounded(240)
async def test_without_max_tokens_a_prompt_near_the_context_end_generates_up_to_it(client, openapi):
    """A prompt that fits but leaves fewer than 1,024 tokens was a 400: it asked for 1,024 by default."""
    for path in ("/v1/completions", "/v1/chat/completions"):
        words = await _words_for(client, path, CONTEXT - 150)
        for stream in (False, True):
            status, usage, finish_reason = await _answer(client, path, _body(path, words, ignore_eos=True, stream=stream))
            assert status == 200, (path, stream, usage)
            assert CONTEXT - 1024 < usage["prompt_tokens"] < CONTEXT, usage
            # The context's end stopped it: every token of it is used, and the reason is "length".
            assert usage["prompt_tokens"] + usage["completion_tokens"] == CONTEXT, (path, stream, usage)
            assert finish_reason == "length"
        # An explicit max_tokens keeps its meaning: that many, or a 400 if they cannot fit.
        refused = await client.post(path, json=_body(path, words, max_tokens=1024))
        assert refused.status_code == 400
        openapi.validate(refused.json(), "ErrorResponse")
        assert refused.json()["error"]["code"] == "context_length_exceeded"
        # OpenAI's wording, which clients and litellm recognise a context overflow by.
        what = "prompt" if path == "/v1/completions" else "messages"
        shape = (
            rf"This model's maximum context length is {CONTEXT} tokens\. However, you requested (\d+) tokens "
            rf"\((\d+) in the {what}, 1024 in the completion\)\. Please reduce the length of the {what} or completion\."
        )
        matched = re.fullmatch(shape, refused.json()["error"]["message"])
        assert matched and int(matched[1]) == int(matched[2]) + 1024, refused.json()["error"]["message"]


@bounded(120)
async def test_without_max_tokens_a_prompt_that_leaves_no_room_is_context_length_exceeded(client, openapi):
    path = "/v1/completions"
    words = await _words_for(client, path, CONTEXT + 20)
    for stream in (False, True):
        response = await client.post(path, json=_body(path, words, stream=stream))
        assert response.status_code == 400, response.text[:300]
        openapi.validate(response.json(), "ErrorResponse")
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("prompt", "context_length_exceeded"), error
        assert re.fullmatch(
            rf"This model's maximum context length is {CONTEXT} tokens\. However, your prompt resulted in (at least )?\d+ tokens, "
            r"leaving no room for a completion\. Please reduce the length of the prompt or completion\.",
            error["message"],
        ), error

