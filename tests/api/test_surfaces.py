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
from mlxtrio.api._auth import api_key_owner, require_bearer_token
from mlxtrio.api._common import install_error_handlers
from mlxtrio.api._surface import Surface, error_body_by_path


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


async def test_the_key_a_request_carried_names_its_owner():
    """What a request keeps is its key's: the owner is the key's digest, never the key, and the same for either header."""
    app = App(__name__)
    install_error_handlers(app)
    require_bearer_token(app, ["one-key", "two-key"], code="invalid_api_key", key_header="x-api-key")

    @app.get("/whose")
    async def whose() -> Response:
        return Response(api_key_owner())

    client = app.test_client()
    owners = [
        await (await client.get("/whose", headers=headers)).get_data(as_text=True)
        for headers in ({"Authorization": "Bearer one-key"}, {"x-api-key": "one-key"}, {"x-api-key": "two-key"})
    ]
    assert owners[0] == owners[1] != owners[2]
    assert len(owners[0]) == 64 and "one-key" not in owners[0]
    open_app = App(__name__)

    @open_app.get("/whose")
    async def nobody() -> Response:
        return Response(api_key_owner())

    assert await (await open_app.test_client().get("/whose")).get_data(as_text=True) == ""


async def test_a_surface_owns_the_errors_of_its_paths_that_no_route_answers():
    """A 404 under a surface's prefix, or a method its route does not take, is in the surface's shape, and only there."""
    routes = Blueprint("theirs", __name__)

    @routes.post("/v1/theirs")
    async def theirs() -> Response:
        return Response("ok")

    surface = Surface(
        name="theirs", routes=lambda state: routes, generation_paths=frozenset(), error_body=_their_error, path_prefixes=("/v1/theirs",)
    )
    app = App(__name__)
    install_error_handlers(app, error_body_by_path([surface]))
    install_error_handlers(routes, _their_error)
    app.register_blueprint(routes)
    client = app.test_client()
    for method, path, status in (("GET", "/v1/theirs", 405), ("POST", "/v1/theirs/count", 404)):
        answer = await client.open(path, method=method)
        assert answer.status_code == status
        assert (await answer.get_json())["type"] == "error", path
    for path in ("/v1/theirsx", "/v1/other"):
        answer = await client.post(path)
        assert answer.status_code == 404
        assert set((await answer.get_json())["error"]) == {"message", "type", "param", "code"}, path
