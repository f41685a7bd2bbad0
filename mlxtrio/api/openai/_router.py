"""The OpenAI API's routes: each hands its body to its serving module, or answers from the model catalog."""

from __future__ import annotations

from quart import Blueprint, Response, request

from .._common import ServerState, json_response
from ._serving_chat import chat_completions
from ._serving_completion import completions

__all__ = ["GENERATION_PATHS", "openai_routes"]

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GENERATION_PATHS = frozenset({CHAT_COMPLETIONS, COMPLETIONS})


def _model_object(entry) -> dict:  # noqa: ANN001 - ModelEntry
    return {"id": entry.id, "object": "model", "created": 0, "owned_by": entry.description}


def openai_routes(state: ServerState) -> Blueprint:
    routes = Blueprint("openai", __name__)
    catalog = state.supervisor.catalog

    @routes.post(CHAT_COMPLETIONS)
    async def chat_completions_route() -> Response:
        return await chat_completions(state, await request.get_data(cache=False))

    @routes.post(COMPLETIONS)
    async def completions_route() -> Response:
        return await completions(state, await request.get_data(cache=False))

    @routes.get("/v1/models")
    async def list_models() -> Response:
        return json_response({"object": "list", "data": [_model_object(entry) for entry in catalog.list()]})

    @routes.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        return json_response(_model_object(catalog.resolve(model_id)))

    return routes
