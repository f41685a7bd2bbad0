"""Anthropic's error body: ``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}``.

The status is the kind's, as ``api/_errors.py`` maps it for every surface;
the error type is the one Anthropic's clients expect with that status.
"""

from __future__ import annotations

from quart import g, has_request_context

from ..._errors import ServerError
from .._errors import status_of

__all__ = ["anthropic_error"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    # A worker that is loading, crashed while loading or gone, a server shutting down: retry later.
    503: "overloaded_error",
    504: "timeout_error",
    # Out of memory for this request now: another time, or a smaller one, may fit.
    507: "overloaded_error",
}


def anthropic_error(error: ServerError, request_id: str | None = None) -> dict:
    """The body; ``request_id`` (the one X-Request-Id and the request's log line carry) is the current request's by default."""
    status = status_of(error)
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    message = error.message
    if error.code == "context_length_exceeded":
        # Anthropic's wording, which Claude Code recognises (it then compacts the conversation).
        message = f"prompt is too long: {message}"
    body: dict = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id is None and has_request_context() and "record" in g:
        request_id = g.record.request_id
    if request_id is not None:
        body["request_id"] = request_id
    return body
