"""A context a view enters for its streaming body is left exactly once: by the body, or else at the request's end.

Through real HTTP (Hypercorn on a loopback port) with mlxtrio's own app
class; the context here records what happens to it instead of starting a
generation, so each way a body can end is reached on purpose.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request

from mlxtrio.api._asgi import App, enter_for_body

from ..helpers import bounded


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.done = trio.Event()

    @contextlib.asynccontextmanager
    async def context(self) -> AsyncIterator[str]:
        self.events.append("entered")
        try:
            yield "value"
        finally:
            self.events.append("left")
            self.done.set()

    def unused(self) -> None:
        self.events.append("unused")


def make_app(recorder: Recorder, release: trio.Event) -> App:
    app = App(__name__)

    @app.get("/stream/<way>")
    async def stream(way: str) -> Response:
        held = await enter_for_body(recorder.context(), unused=recorder.unused)

        async def body() -> AsyncIterator[bytes]:
            async with held as value:
                yield value.encode() + b"\n"
                if way == "hang":
                    await release.wait()
                yield b"end\n"

        response = Response(body(), content_type="text/plain")
        response.timeout = None
        return response

    @app.after_request
    async def fail_some(response: Response) -> Response:
        if request.path == "/stream/fail-before-body":
            raise RuntimeError("the response fails before its body")
        return response

    return app


@pytest.fixture
async def served(nursery):  # noqa: ANN201
    recorder, release, stop = Recorder(), trio.Event(), trio.Event()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    binds = await nursery.start(lambda task_status: serve(make_app(recorder, release), config, shutdown_trigger=stop.wait, task_status=task_status))
    async with httpx.AsyncClient(base_url=binds[0], timeout=30) as client:
        yield client, recorder, release
    release.set()
    stop.set()


@bounded(30)
async def test_a_body_that_runs_leaves_it(served):
    client, recorder, _ = served
    response = await client.get("/stream/plain")
    assert response.status_code == 200 and response.text == "value\nend\n"
    await recorder.done.wait()
    assert recorder.events == ["entered", "left"]


@bounded(30)
async def test_a_response_that_fails_before_its_body_leaves_it_at_the_end(served):
    client, recorder, _ = served
    response = await client.get("/stream/fail-before-body")
    assert response.status_code == 500
    await recorder.done.wait()
    assert recorder.events == ["entered", "left", "unused"]


@bounded(30)
async def test_a_client_that_leaves_midway_has_it_left_by_the_body(served):
    client, recorder, _ = served
    async with client.stream("GET", "/stream/hang") as response:
        async for line in response.aiter_lines():
            assert line == "value"
            break
    # Closing the stream closes the connection: the server cancels the request.
    await recorder.done.wait()
    assert recorder.events == ["entered", "left"]
