"""The one map from the server's error kinds to HTTP: complete, so no kind can reach a client as a KeyError."""

from __future__ import annotations

from mlxtrio import ErrorKind, ServerError
from mlxtrio.api._errors import STATUS, openai_error, status_of


def test_every_error_kind_has_a_status_and_an_openai_body():
    assert set(STATUS) == set(ErrorKind)
    for kind in ErrorKind:
        error = ServerError(kind, "what went wrong", code="a_code", param="a_field")
        assert 400 <= status_of(error) < 600
        assert openai_error(error) == {
            "error": {"message": "what went wrong", "type": openai_error(error)["error"]["type"], "param": "a_field", "code": "a_code"}
        }
