"""What the ported tests share: request bodies, OpenAI's error shape, SSE events."""

from __future__ import annotations

import httpx

from ..helpers import sse_events

SYSTEM_USER = [
    {"role": "system", "content": "Book"},
    {"role": "user", "content": "What is the best book"},
]
# Far over any context a test server runs with (tens of thousands of tokens, 100 kB: well under the body cap).
OVER_CONTEXT = "What is the best book? " * 4500


def error_of(response: httpx.Response, status: int) -> dict:
    """The ``error`` object of an OpenAI-shaped error response with ``status``."""
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert {"message", "type", "param", "code"} <= set(error)
    return error


def stream(http: httpx.Client, path: str, body: dict) -> list[object]:
    """The events of a streamed answer (JSON objects, then "[DONE]"), after checking it is an SSE 200."""
    response = http.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]", events[-3:]
    return events[:-1]


def assert_count_matches_finish(finish_reason: str, completion_tokens: int, max_tokens: int) -> None:
    """``length`` means the limit was reached; ``stop`` means the model ended earlier."""
    assert finish_reason in ("stop", "length"), finish_reason
    if finish_reason == "length":
        assert completion_tokens == max_tokens
    else:
        assert completion_tokens <= max_tokens
