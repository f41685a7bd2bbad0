"""An API surface's routes answer errors in the surface's own shape, those raised by the shared checks included.

The seam a new surface (a folder of ``mlxtrio/api``) plugs into: its routes
are a blueprint with its own error handlers (``_app.create_api_app``), and
paths that no surface serves keep OpenAI's shape.
"""

from __future__ import annotations

from quart import Blueprint, Response
from werkzeug.exceptions import ImATeapot
from werkzeug.exceptions import NotImplemented as NotImplementedError_

from mlxtrio import ErrorKind, ServerError
from mlxtrio.api._asgi import App
from mlxtrio.api._auth import require_bearer_token
from mlxtrio.api._common import install_error_handlers


def _their_error(error: ServerError) -> dict:
    return {"type": "error", "error": {"type": error.kind.name.lower(), "message": error.message}}


def make_app() -> App:
    app = App(__name__)
    install_error_handlers(app)
    require_bearer_token(app, ["key"], code="invalid_api_key")
    routes = Blueprint("theirs", __name__)

    @routes.post("/v1/theirs")
    async def theirs() -> Response:
        raise ServerError(ErrorKind.INVALID_REQUEST, "no good", param="messages")

    install_error_handlers(routes, _their_error)
    app.register_blueprint(routes)
    return app


async def test_each_surface_writes_its_own_error_bodies():
    client = make_app().test_client()
    refused = await client.post("/v1/theirs")  # by the app's key check, before the view
    assert refused.status_code == 401
    assert await refused.get_json() == {"type": "error", "error": {"type": "unauthenticated", "message": "no API key: send it as 'Authorization: Bearer <key>'"}}
    failed = await client.post("/v1/theirs", headers={"Authorization": "Bearer key"})
    assert failed.status_code == 400
    assert await failed.get_json() == {"type": "error", "error": {"type": "invalid_request", "message": "no good"}}
    unknown = await client.post("/v1/nobodys", headers={"Authorization": "Bearer key"})
    assert unknown.status_code == 404
    assert (await unknown.get_json())["error"] == {"message": "no such endpoint", "type": "not_found_error", "param": None, "code": None}


async def test_an_http_error_keeps_its_own_status_in_the_surface_shape():
    """werkzeug's errors without an ErrorKind of their own (a 418, a 501) keep their status; once they became 400 or 500."""
    app = App(__name__)
    install_error_handlers(app)

    @app.get("/teapot")
    async def teapot() -> Response:
        raise ImATeapot()

    @app.get("/unimplemented")
    async def unimplemented() -> Response:
        raise NotImplementedError_()

    client = app.test_client()
    for path, status in (("/teapot", 418), ("/unimplemented", 501)):
        answer = await client.get(path)
        assert answer.status_code == status
        assert set((await answer.get_json())["error"]) == {"message", "type", "param", "code"}
