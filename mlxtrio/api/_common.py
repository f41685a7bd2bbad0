"""What both HTTP apps share: the server state they see, JSON responses, OpenAI-shaped errors."""

from __future__ import annotations

import logging

import attrs
import msgspec
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .._config import Config
from .._errors import ErrorKind, ServerError
from .._metrics import Metrics
from ..orchestrator import Supervisor
from ._errors import KIND_OF_STATUS, openai_error, status_of
from ._in_flight import InFlight
from .openai._schemas import RequestLimits

__all__ = ["ServerState", "error_response", "install_error_handlers", "json_response"]

log = logging.getLogger("mlxtrio.api")
_json = msgspec.json.Encoder()


@attrs.define(eq=False)
class ServerState:
    """The little the HTTP side knows of the server."""

    config: Config
    supervisor: Supervisor
    metrics: Metrics
    shutting_down: bool = False
    # Both apps' requests in flight: counted, and cut when a graceful stop's grace period is over.
    in_flight: InFlight = attrs.Factory(InFlight)

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(
            max_tokens=self.config.max_tokens_limit,
            max_choices=self.config.max_choices,
            grammar_max_bytes=self.config.grammar_max_bytes,
        )


def json_response(payload: object, status: int = 200) -> Response:
    return Response(_json.encode(payload), status=status, content_type="application/json")


def error_response(error: ServerError) -> Response:
    response = json_response(openai_error(error), status_of(error))
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if error.www_authenticate:
        response.headers["WWW-Authenticate"] = "Bearer"
    if error.close_connection:
        response.headers["Connection"] = "close"
    return response


def install_error_handlers(app: QuartTrio) -> None:
    """Every error leaves in OpenAI's shape, with its status; nothing is a bare 500 page."""

    @app.errorhandler(ServerError)
    async def server_error(error: ServerError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = {
            404: "no such endpoint",
            405: "method not allowed on this endpoint",
            408: "the request body did not arrive within the body timeout (MLX_BODY_TIMEOUT)",
            413: "the request body is too large",
        }.get(status, error.description or error.name)
        kind = KIND_OF_STATUS.get(status, ErrorKind.INVALID_REQUEST if status < 500 else ErrorKind.INTERNAL)
        return error_response(ServerError(kind, message, close_connection=status == 413))

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unexpected error while handling a request")
        return error_response(ServerError(ErrorKind.INTERNAL, f"internal error: {type(error).__name__}"))
