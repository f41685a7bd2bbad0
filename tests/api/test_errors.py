"""The one map from the server's error kinds to HTTP: complete, so no kind can reach a client as a KeyError."""

from __future__ import annotations

from mlxtrio import ErrorKind, ServerError
from mlxtrio.api._errors import STATUS, openai_error, status_of

# The error types OpenAI's API answers with.
_OPENAI_TYPES = {
    "invalid_request_error", "not_found_error", "rate_limit_error", "service_unavailable", "timeout",
    "insufficient_memory", "server_error",
}


def test_every_error_kind_has_a_status_and_an_openai_body():
    assert set(STATUS) == set(ErrorKind)
    for kind in ErrorKind:
        error = ServerError(kind, "what went wrong", code="a_code", param="a_field")
        assert 400 <= status_of(error) < 600
        body = openai_error(error)["error"]
        assert body.pop("type") in _OPENAI_TYPES
        assert body == {"message": "what went wrong", "param": "a_field", "code": "a_code"}
