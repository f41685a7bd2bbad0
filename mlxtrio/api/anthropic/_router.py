"""The Messages API's routes: each hands its body to its serving module.

Only under /v1: Anthropic's clients append /v1/messages to their base URL.
Claude Code adds ``?beta=true``, and headers (``anthropic-version``,
``anthropic-beta``) that change nothing here.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from .._common import ServerState
from ._serving import count_tokens, messages

__all__ = ["GENERATION_PATHS", "PREFIX", "anthropic_routes"]

PREFIX = "/v1/messages"
COUNT_TOKENS = PREFIX + "/count_tokens"
# A count is a Generate too: it waits in the intake like any request its model's worker takes.
GENERATION_PATHS = frozenset({PREFIX, COUNT_TOKENS})


def anthropic_routes(state: ServerState) -> Blueprint:
    # The blueprint's name is the surface's label in metrics and request logs.
    routes = Blueprint("anthropic", __name__)

    @routes.post(PREFIX)
    async def create_message() -> Response:
        return await messages(state, await request.get_data(cache=False))

    @routes.post(COUNT_TOKENS)
    async def count_message_tokens() -> Response:
        return await count_tokens(state, await request.get_data(cache=False))

    return routes
