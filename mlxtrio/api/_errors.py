"""Error kinds as HTTP sees them: the one place a kind becomes a status; and OpenAI's error body, the default one.

Each API surface writes error bodies in its own shape (its ``Surface.error_body``);
OpenAI's is also the admin API's, and the answer on paths that no surface serves.
"""

from __future__ import annotations

from .._errors import ErrorKind, ServerError

__all__ = ["KIND_OF_STATUS", "STATUS", "openai_error", "status_of"]

STATUS = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.METHOD_NOT_ALLOWED: 405,
    ErrorKind.BODY_TIMEOUT: 408,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorKind.MISDIRECTED: 421,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.OUT_OF_MEMORY: 507,
}
# OpenAI's error types; a kind not named is an invalid_request_error below 500 and a server_error from it.
_OPENAI_TYPES = {
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.OVERLOADED: "rate_limit_error",
    ErrorKind.UNAVAILABLE: "service_unavailable",
    ErrorKind.TIMEOUT: "timeout",
    ErrorKind.OUT_OF_MEMORY: "insufficient_memory",
}
# The other way, for errors another layer (werkzeug) gives as a status.
KIND_OF_STATUS = {status: kind for kind, status in STATUS.items()}


def status_of(error: ServerError) -> int:
    return STATUS[error.kind]


def openai_error(error: ServerError) -> dict:
    """``{"error": {...}}`` as OpenAI's API answers."""
    status = STATUS[error.kind]
    kind = _OPENAI_TYPES.get(error.kind, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}
