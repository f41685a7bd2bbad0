"""The Quart-Trio app class both APIs use: its last send of a response is not cut by the client's disconnect.

quart-trio 0.12 runs each request as two tasks in one nursery: one sends the
response, one reads the ASGI messages and cancels the nursery when
``http.disconnect`` comes (so a client that leaves mid-stream stops its
stream at once, which mlxtrio relies on). Hypercorn 0.18 delivers that
``http.disconnect`` from inside the response's last send, when it closes
the HTTP stream, and in the same call goes on to mark the keep-alive
connection idle, which starts the task that closes it after
``keep_alive_timeout`` or when the server stops. The cancel lands in that
call, the task never starts, and the connection is never closed by the
server: it stays open until the client closes it, and a graceful stop with
any idle keep-alive client (an SDK's connection pool, a load balancer)
waits out the whole grace period.

So the last body message of a response (``more_body`` false) is sent in a
shielded scope, bounded by ``_LAST_SEND_LIMIT``. Everything before it stays
cancellable: a client leaving mid-stream ends the response as before.

A streaming body runs after its view has returned, in the same task. Some
work must start before the response's headers go out: a generation's
``Generate`` leaves as soon as the request's body is read, so that in a
burst the worker starts on the first requests while the orchestrator is
still taking in the rest. ``enter_for_body`` enters
such a context in the view, for the body to take over with ``async with``.
If the body never runs (the client left first, or the response failed
before its body), the request's end leaves the context instead, shielded
and bounded as the last send is.

Each app counts its requests in flight, from headers to the response's last
byte, in an ``InFlight`` (the server's, shared by both apps), and runs each
view in one of its cuttable scopes: when a graceful stop's grace period is
over, a view still running answers 503 ``shutting_down`` (``_in_flight.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import trio
from hypercorn.typing import ASGISendCallable, ASGISendEvent
from quart import request as current_request
from quart.ctx import RequestContext
from quart.typing import ResponseReturnValue
from quart.wrappers import Request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from ._in_flight import InFlight

__all__ = ["App", "HeldForBody", "enter_for_body"]

T = TypeVar("T")
# Contexts a view entered for its response's body, in the request's ASGI scope.
_HELD = "mlxtrio.held_for_body"

# The last message is a few bytes; Hypercorn already shields its socket writes.
_LAST_SEND_LIMIT = 5.0


class HeldForBody(Generic[T]):
    """A context entered in a view, for its response's body to leave (``async with held as value``)."""

    def __init__(self, manager: AbstractAsyncContextManager[T], value: T, unused: Callable[[], None] | None) -> None:
        self._manager = manager
        self._value = value
        self._unused = unused
        self._taken = False
        self._left = False

    @property
    def value(self) -> T:
        """What entering gave, for the view to use before the body takes it over."""
        return self._value

    async def __aenter__(self) -> T:
        self._taken = True
        return self._value

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        if self._left:
            return False
        self._left = True
        return await self._manager.__aexit__(exc_type, exc, traceback)

    async def _release(self) -> None:
        """At the request's end: left if the body did not leave it, and ``unused`` called if no body took it."""
        try:
            await self.__aexit__(None, None, None)
        finally:
            if not self._taken and self._unused is not None:
                self._unused()


async def enter_for_body(manager: AbstractAsyncContextManager[T], *, unused: Callable[[], None] | None = None) -> HeldForBody[T]:
    """Enter ``manager`` now; the response's body leaves it, or else the request's end does (then calling ``unused``)."""
    value = await manager.__aenter__()
    held = HeldForBody(manager, value, unused)
    current_request.scope.setdefault(_HELD, []).append(held)
    return held


class _HTTPConnection(TrioASGIHTTPConnection):
    async def handle_request(self, nursery: trio.Nursery, request: Request, send: ASGISendCallable) -> None:  # type: ignore[override]
        async def send_last_shielded(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.move_on_after(_LAST_SEND_LIMIT) as scope:
                    scope.shield = True
                    await send(message)
            else:
                await send(message)

        try:
            with self.app.in_flight.request():
                await super().handle_request(nursery, request, send_last_shielded)
        finally:
            # A body that ran has left its contexts already; these are the ones no body took.
            held: list[HeldForBody[Any]] = request.scope.pop(_HELD, [])
            for context in reversed(held):
                with trio.move_on_after(_LAST_SEND_LIMIT) as scope:
                    scope.shield = True
                    await context._release()  # noqa: SLF001


class App(QuartTrio):
    """QuartTrio, with the last send of each response shielded, contexts held for bodies, requests counted and cuttable (see the module's docstring)."""

    asgi_http_class = _HTTPConnection

    def __init__(self, import_name: str, *, in_flight: InFlight | None = None) -> None:
        super().__init__(import_name)
        self.in_flight = InFlight() if in_flight is None else in_flight

    async def dispatch_request(self, request_context: RequestContext | None = None) -> ResponseReturnValue:
        with self.in_flight.cuttable():
            return await super().dispatch_request(request_context)
        # Only if the cut cancelled the view: nothing of its response has gone out.
        raise self.in_flight.error()
