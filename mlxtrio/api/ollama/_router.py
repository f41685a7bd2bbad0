"""Ollama's API routes: generation, what can be served and what is loaded, and the refusals of model management.

Under /api, as Ollama serves them; ``running`` is the answer to the probe of
``/`` Ollama's clients make before anything else (api/_app.py serves it at
``/`` to every client that is not a browser asking for the playground). Pulling, pushing, creating, copying and deleting
models are Ollama's own store's: here the operator names the models
(``--model``, the config file), so each is an error that says so (a pull of a
model already here succeeds, as Ollama's would).
"""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response, request

from ... import __version__
from ..._errors import ErrorKind, ServerError
from .._common import ServerState, json_response
from .._decode import decode_body
from ._embed import embed_route, legacy_embeddings_route
from ._models import list_models, running_models, show_model
from ._schemas import ModelRequest
from ._serving import NDJSON, chat, generate, resolved

__all__ = ["GENERATION_PATHS", "PREFIX", "ollama_routes", "running"]

PREFIX = "/api"
CHAT = PREFIX + "/chat"
GENERATE = PREFIX + "/generate"
GENERATION_PATHS = frozenset({CHAT, GENERATE})
# The Ollama release whose API this surface follows: clients check it before using newer fields.
OLLAMA_VERSION = "0.12.0"


def running() -> Response:
    """Ollama's answer at ``/``: clients probe it to learn that a server is there."""
    return Response("Ollama is running", status=200, content_type="text/plain; charset=utf-8")


_MANAGED_HERE = (
    "mlxtrio serves the models its operator names (--model or MLX_MODEL, the config file's [models]) and those in the "
    "Hugging Face cache; GET /api/tags lists them"
)


# Ollama's model management, as its clients call it: (path, methods, what it would do).
_REFUSED = (
    (PREFIX + "/push", ["POST"], "pushing a model"),
    (PREFIX + "/create", ["POST"], "creating a model"),
    (PREFIX + "/copy", ["POST"], "copying a model"),
    (PREFIX + "/delete", ["DELETE"], "deleting a model"),
    (PREFIX + "/blobs/<path:digest>", ["HEAD", "POST"], "uploading a blob (to create a model)"),
)


def _refused(what: str) -> ServerError:
    return ServerError(ErrorKind.FORBIDDEN, f"{what} is not available on this server: {_MANAGED_HERE}", code="model_management")


async def _named_model() -> ModelRequest:
    body = await request.get_data(cache=False)
    return decode_body(body or b"{}", ModelRequest)


def ollama_routes(state: ServerState) -> Blueprint:
    # The blueprint's name is the surface's label in metrics and request logs.
    routes = Blueprint("ollama", __name__)

    @routes.post(CHAT)
    async def chat_route() -> Response:
        return await chat(state, await request.get_data(cache=False))

    @routes.post(GENERATE)
    async def generate_route() -> Response:
        return await generate(state, await request.get_data(cache=False))

    @routes.get(PREFIX + "/version")
    async def version() -> Response:
        return json_response({"version": OLLAMA_VERSION, "mlxtrio": __version__})

    @routes.post(PREFIX + "/embed")
    async def embed() -> Response:
        return await embed_route(state, await request.get_data(cache=False))

    @routes.post(PREFIX + "/embeddings")
    async def embeddings() -> Response:
        return await legacy_embeddings_route(state, await request.get_data(cache=False))

    @routes.get(PREFIX + "/tags")
    async def tags() -> Response:
        return json_response(await list_models(state))

    @routes.get(PREFIX + "/ps")
    async def ps() -> Response:
        return json_response(await running_models(state))

    @routes.post(PREFIX + "/show")
    async def show() -> Response:
        named = (await _named_model()).model_name()
        return json_response(await show_model(resolved(state, named)))

    @routes.post(PREFIX + "/pull")
    async def pull() -> Response:
        asked = await _named_model()
        named = asked.model_name()
        try:
            entry = resolved(state, named)
        except ServerError as exc:
            if exc.kind is not ErrorKind.NOT_FOUND:
                raise
            entry = None
        if entry is None or entry.source == "hub":
            raise _refused("pulling a model")
        # Already here: Ollama's last progress object.
        if asked.stream is False:
            return json_response({"status": "success"})
        return Response(msgspec.json.encode({"status": "success"}) + b"\n", status=200, content_type=NDJSON)

    for number, (path, methods, what) in enumerate(_REFUSED):

        async def refuse(what: str = what, **_path: str) -> Response:
            raise _refused(what)

        # Quart names a view by its endpoint: one name per path.
        routes.add_url_rule(path, f"refuse_{number}", refuse, methods=methods)

    return routes
