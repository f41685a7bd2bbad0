"""The Responses API's routes: creating a response, counting its input, and reading or deleting a stored one."""

from __future__ import annotations

from quart import Blueprint, Response, request

from ..._errors import ErrorKind, ServerError
from .._auth import api_key_owner
from .._common import ServerState, json_response
from ._serving import count_input_tokens, create_response, not_found
from ._store import ResponseStore

__all__ = ["GENERATION_PATHS", "PATH_PREFIXES", "responses_routes"]

# Each path also without /v1, as on the OpenAI surface: several clients are configured with a base URL that lacks it.
PREFIXES = ("/v1", "")
RESPONSES = "/responses"
INPUT_TOKENS = "/responses/input_tokens"
GENERATION_PATHS = frozenset(prefix + path for prefix in PREFIXES for path in (RESPONSES, INPUT_TOKENS))
PATH_PREFIXES = tuple(prefix + RESPONSES for prefix in PREFIXES)
MAX_PAGE = 100


def _page_query() -> tuple[str | None, int, str]:
    """input_items' after, limit (1 to 100, default 20) and order (asc or desc, default desc)."""
    limit_text = request.args.get("limit", "20")
    if not limit_text.isascii() or not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
        raise ServerError(ErrorKind.INVALID_REQUEST, f"limit must be within [1, {MAX_PAGE}], not {limit_text[:20]!r}", param="limit")
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ServerError(ErrorKind.INVALID_REQUEST, f"order is asc or desc, not {order[:20]!r}", param="order")
    return request.args.get("after"), int(limit_text), order


def responses_routes(state: ServerState) -> Blueprint:
    routes = Blueprint("responses", __name__)
    store = ResponseStore.from_config(state.config)

    @routes.after_app_serving
    async def close_store() -> None:
        await store.aclose()

    async def create() -> Response:
        return await create_response(state, store, await request.get_data(cache=False))

    async def input_tokens() -> Response:
        return await count_input_tokens(state, store, await request.get_data(cache=False))

    async def retrieve(response_id: str) -> Response:
        if request.args.get("stream", "false") != "false":
            raise ServerError(ErrorKind.INVALID_REQUEST, "streaming a stored response again is not supported", param="stream")
        stored = await store.get(api_key_owner(), response_id)
        if stored is None:
            raise not_found(response_id)
        return json_response(stored.response)

    async def list_input_items(response_id: str) -> Response:
        after, limit, order = _page_query()
        page = await store.input_items(api_key_owner(), response_id, after=after, limit=limit, order=order)  # type: ignore[arg-type]
        if page is None:
            raise not_found(response_id)
        first, last = (page.items[0]["id"], page.items[-1]["id"]) if page.items else ("", "")
        return json_response({"object": "list", "data": page.items, "first_id": first, "last_id": last, "has_more": page.has_more})

    async def delete(response_id: str) -> Response:
        if not await store.delete(api_key_owner(), response_id):
            raise not_found(response_id)
        return json_response({"id": response_id, "object": "response", "deleted": True})

    for prefix in PREFIXES:
        # Quart names a view by its endpoint: one name per path.
        routes.add_url_rule(prefix + RESPONSES, f"create{prefix}", create, methods=["POST"])
        routes.add_url_rule(prefix + INPUT_TOKENS, f"input_tokens{prefix}", input_tokens, methods=["POST"])
        routes.add_url_rule(prefix + RESPONSES + "/<response_id>", f"retrieve{prefix}", retrieve, methods=["GET"])
        routes.add_url_rule(prefix + RESPONSES + "/<response_id>", f"delete{prefix}", delete, methods=["DELETE"])
        routes.add_url_rule(prefix + RESPONSES + "/<response_id>/input_items", f"input_items{prefix}", list_input_items, methods=["GET"])
    return routes
