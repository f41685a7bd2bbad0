"""The API app (the main port): the checks around every request, /health, and each API surface's routes.

An API surface is a folder (``openai/``) whose ``SURFACE`` gives its routes
as a Quart blueprint, the paths among them that generate, and how it writes
an error body. Adding one is adding its folder and its line in ``SURFACES``;
the checks here (browser checks, API keys, the intake, the record of each
request) and the generation core (``_generation.py``) serve them all.
"""

from __future__ import annotations

from quart import Response

from . import anthropic, ollama, openai, responses
from ._asgi import App
from ._auth import require_bearer_token
from ._common import ServerState, install_error_handlers, json_response
from ._generation import install_intake
from ._observe import install_observability
from ._origin import install_browser_checks
from ._surface import Surface, error_body_by_path

__all__ = ["SURFACES", "create_api_app"]

SURFACES: tuple[Surface, ...] = (openai.SURFACE, anthropic.SURFACE, responses.SURFACE, ollama.SURFACE)

def create_api_app(state: ServerState) -> App:
    app = App("mlxtrio.api.main", in_flight=state.in_flight)
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_body_bytes
    app.config["BODY_TIMEOUT"] = state.config.body_timeout
    # Errors on paths no surface owns are OpenAI-shaped.
    install_error_handlers(app, error_body_by_path(SURFACES))
    install_observability(app, state.metrics, own_surface="server")
    install_browser_checks(app, state.config, bound_host=state.config.host)
    # /health stays open: load balancers and the daemon script probe it without a key.
    require_bearer_token(app, state.config.api_keys, code="invalid_api_key", open_paths={"/health"}, key_header="x-api-key")
    # After the key check.
    install_intake(app, state.supervisor.intake, frozenset().union(*(surface.generation_paths for surface in SURFACES)))

    @app.get("/health")
    async def health() -> Response:
        if state.shutting_down:
            return json_response({"status": "shutting_down"}, 503)
        return json_response({"status": "ok"})

    for surface in SURFACES:
        routes = surface.routes(state)
        install_error_handlers(routes, surface.error_body)
        app.register_blueprint(routes)
    return app
