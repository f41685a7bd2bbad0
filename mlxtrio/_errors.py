"""The errors a client can see, in one place, each with its HTTP status and OpenAI error type."""

from __future__ import annotations

__all__ = ["ServerError"]

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",  # as OpenAI answers a bad key
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
    507: "insufficient_memory",
}


class ServerError(Exception):
    """An error with an HTTP status, rendered in OpenAI's shape ``{"error": {...}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        www_authenticate: bool = False,
        close_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.code = code
        self.param = param
        self.retry_after = retry_after
        # A 401 names the scheme it wants (RFC 9110).
        self.www_authenticate = www_authenticate
        # Answered before the body was read: the connection cannot carry another request.
        self.close_connection = close_connection

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
