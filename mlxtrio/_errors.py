"""The error a client is told of: a kind from the protocol's one list, a message, and what it names."""

from __future__ import annotations

from ._protocol import ErrorKind

__all__ = ["ErrorKind", "ServerError"]


class ServerError(Exception):
    """A failure to answer a request, by kind; the API layer renders it in its surface's shape (api/_errors.py)."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        www_authenticate: bool = False,
        close_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        # A 401 names the scheme it wants (RFC 9110).
        self.www_authenticate = www_authenticate
        # Answered before the body was read: the connection cannot carry another request.
        self.close_connection = close_connection
