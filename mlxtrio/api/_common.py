"""What both HTTP apps share: the server state they see, the limits of a request, JSON responses, error responses."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import msgspec
from quart import Blueprint, Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .._config import Config
from .._errors import ErrorKind, ServerError
from .._metrics import Metrics
from ..orchestrator import Supervisor
from ._errors import KIND_OF_STATUS, openai_error, status_of
from ._in_flight import InFlight

__all__ = ["ErrorBody", "RequestLimits", "ServerState", "error_response", "install_error_handlers", "json_response"]

log = logging.getLogger("mlxtrio.api")
_json = msgspec.json.Encoder()

# How a surface writes an error's body (``{"error": {...}}`` for OpenAI's).
ErrorBody = Callable[[ServerError], dict]


@attrs.frozen(kw_only=True)
class RequestLimits:
    """What one request may ask for (MLX_MAX_TOKENS, MLX_MAX_CHOICES, MLX_GRAMMAR_MAX_BYTES).

    A request that names no max_tokens may generate up to the end of the
    context, and at most ``max_tokens``: only the worker knows its prompt's length.
    """

    max_tokens: int
    max_choices: int
    # A grammar's JSON schema, in bytes.
    grammar_max_bytes: int


@attrs.define(eq=False)
class ServerState:
    """The little the HTTP side knows of the server."""

    config: Config
    supervisor: Supervisor
    metrics: Metrics
    shutting_down: bool = False
    # Both apps' requests in flight: counted, and cut when a graceful stop's grace period is over.
    in_flight: InFlight = attrs.Factory(InFlight)
    limits: RequestLimits = attrs.field(init=False)

    @limits.default
    def _limits(self) -> RequestLimits:
        return RequestLimits(
            max_tokens=self.config.max_tokens_limit,
            max_choices=self.config.max_choices,
            grammar_max_bytes=self.config.grammar_max_bytes,
        )


def json_response(payload: object, status: int = 200) -> Response:
    return Response(_json.encode(payload), status=status, content_type="application/json")


def error_response(error: ServerError, body: ErrorBody = openai_error, *, status: int | None = None) -> Response:
    """``error`` as ``body`` writes it, with its kind's status (or ``status``: an HTTP error's own, where no kind is its)."""
    response = json_response(body(error), status_of(error) if status is None else status)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if error.www_authenticate:
        response.headers["WWW-Authenticate"] = "Bearer"
    if error.close_connection:
        response.headers["Connection"] = "close"
    return response


def install_error_handlers(target: QuartTrio | Blueprint, body: ErrorBody = openai_error) -> None:
    """Every error of ``target`` (an app, or a surface's routes) leaves as ``body`` writes it, with its status; nothing is a bare 500 page."""

    @target.errorhandler(ServerError)
    async def server_error(error: ServerError) -> Response:
        return error_response(error, body)

    @target.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = {
            404: "no such endpoint",
            405: "method not allowed on this endpoint",
            408: "the request body did not arrive within the body timeout (MLX_BODY_TIMEOUT)",
            413: "the request body is too large",
        }.get(status, error.description or error.name)
        kind = KIND_OF_STATUS.get(status, ErrorKind.INVALID_REQUEST if status < 500 else ErrorKind.INTERNAL)
        return error_response(ServerError(kind, message, close_connection=status == 413), body, status=status)

    @target.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unexpected error while handling a request")
        return error_response(ServerError(ErrorKind.INTERNAL, f"internal error: {type(error).__name__}"), body)
