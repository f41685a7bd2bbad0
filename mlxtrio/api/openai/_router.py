"""The OpenAI API's routes: each hands its body to its serving module, or answers from the model catalog."""

from __future__ import annotations

from quart import Blueprint, Response, request

from .._common import ServerState, json_response
from ._serving_chat import chat_completions
from ._serving_completion import completions
from ._serving_embedding import embeddings

__all__ = ["GENERATION_PATHS", "openai_routes"]

# Each path also without /v1: several clients are configured with a base URL that lacks it.
PREFIXES = ("/v1", "")
CHAT_COMPLETIONS = "/chat/completions"
COMPLETIONS = "/completions"
EMBEDDINGS = "/embeddings"
GENERATION_PATHS = frozenset(prefix + path for prefix in PREFIXES for path in (CHAT_COMPLETIONS, COMPLETIONS))


def _model_object(entry) -> dict:  # noqa: ANN001 - ModelEntry
    return {"id": entry.id, "object": "model", "created": 0, "owned_by": entry.description}


def openai_routes(state: ServerState) -> Blueprint:
    routes = Blueprint("openai", __name__)
    catalog = state.supervisor.catalog

    async def chat_completions_route() -> Response:
        return await chat_completions(state, await request.get_data(cache=False))

    async def completions_route() -> Response:
        return await completions(state, await request.get_data(cache=False))

    async def embeddings_route() -> Response:
        return await embeddings(state, await request.get_data(cache=False))

    async def list_models() -> Response:
        return json_response({"object": "list", "data": [_model_object(entry) for entry in catalog.list()]})

    async def get_model(model_id: str) -> Response:
        return json_response(_model_object(catalog.resolve(model_id)))

    for prefix in PREFIXES:
        # Quart names a view by its endpoint: one name per path.
        routes.add_url_rule(prefix + CHAT_COMPLETIONS, f"chat_completions{prefix}", chat_completions_route, methods=["POST"])
        routes.add_url_rule(prefix + COMPLETIONS, f"completions{prefix}", completions_route, methods=["POST"])
        routes.add_url_rule(prefix + EMBEDDINGS, f"embeddings{prefix}", embeddings_route, methods=["POST"])
        routes.add_url_rule(prefix + "/models", f"list_models{prefix}", list_models, methods=["GET"])
        routes.add_url_rule(prefix + "/models/<path:model_id>", f"get_model{prefix}", get_model, methods=["GET"])

    return routes
