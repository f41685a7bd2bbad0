"""The admin API (its own port, loopback by default): status, load, unload, worker health."""

from __future__ import annotations

import os
import time

import attrs
import msgspec
from quart import Response, request

from .._errors import ServerError
from ._asgi import App
from ._auth import require_bearer_token
from ._common import ServerState, install_error_handlers, json_response
from ._decode import decode_body
from ._observe import current_record, install_observability
from ._origin import install_browser_checks
from ._pages import WebPage

__all__ = ["create_admin_app"]


class _ModelBody(msgspec.Struct):
    model: str | None = None


async def _model_from_body(state: ServerState, *, required: bool) -> str | None:
    body = await request.get_data(cache=False)
    if not body.strip():
        parsed = _ModelBody()
    else:
        parsed = decode_body(body, _ModelBody)
    if parsed.model is None and required:
        return state.supervisor.catalog.default_model
    if parsed.model is not None:
        current_record().name_model(parsed.model)
    return parsed.model


def create_admin_app(state: ServerState) -> App:
    app = App("mlxtrio.admin", in_flight=state.in_flight)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.config["BODY_TIMEOUT"] = state.config.body_timeout
    install_error_handlers(app)
    install_observability(app, state.metrics, own_surface="admin")
    install_browser_checks(app, state.config, bound_host=state.config.admin_host)
    admin_token = [state.config.admin_token] if state.config.admin_token else []
    dashboard = WebPage.read("dashboard")
    # The page holds no secret; it asks for the token, which every request it makes then carries.
    require_bearer_token(app, admin_token, code="invalid_admin_token", what="admin token", open_paths=dashboard.paths)
    dashboard.install(app)
    supervisor = state.supervisor
    started_at = time.time()

    @app.get("/admin/status")
    async def status() -> Response:
        return json_response(
            {
                "pid": os.getpid(),
                "started_at": started_at,
                "shutting_down": state.shutting_down,
                "intake": attrs.asdict(supervisor.intake.statistics()),
                "workers": supervisor.describe(),
                "config": state.config.describe(),
            }
        )

    @app.post("/admin/load")
    async def load() -> Response:
        model = await _model_from_body(state, required=True)
        assert model is not None
        served = await supervisor.served_model(model)
        await served.ensure_ready()
        return json_response({"model": model, "state": served.statistics().state, "pid": served.statistics().pid})

    @app.post("/admin/unload")
    async def unload() -> Response:
        model = await _model_from_body(state, required=False)
        models = supervisor.loaded_models() if model is None else [await supervisor.served_model(model)]
        for served in models:
            await served.unload()
        return json_response({"unloaded": [served.model_id for served in models]})

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = state.metrics.exposition()
        return Response(body, status=200, content_type=content_type)

    @app.get("/admin/health")
    async def health() -> Response:
        report = []
        for served in supervisor.loaded_models():
            entry: dict = {"model": served.model_id, "state": served.statistics().state}
            if entry["state"] == "ready":
                try:
                    seconds, pong = await served.ping()
                    entry.update(
                        ok=True,
                        round_trip_ms=round(seconds * 1000, 3),
                        active_sequences=pong.active_sequences,
                        prompt_cache_bytes=pong.prompt_cache_bytes,
                        active_memory_bytes=pong.active_memory_bytes,
                    )
                except ServerError as exc:
                    entry.update(ok=False, error=exc.message)
            report.append(entry)
        healthy = all(entry.get("ok", True) for entry in report)
        return json_response({"ok": healthy, "workers": report}, 200 if healthy else 503)

    return app
