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
"""

from __future__ import annotations

import trio
from hypercorn.typing import ASGISendCallable, ASGISendEvent
from quart.wrappers import Request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

__all__ = ["App"]

# The last message is a few bytes; Hypercorn already shields its socket writes.
_LAST_SEND_LIMIT = 5.0


class _HTTPConnection(TrioASGIHTTPConnection):
    async def handle_request(self, nursery: trio.Nursery, request: Request, send: ASGISendCallable) -> None:  # type: ignore[override]
        async def send_last_shielded(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.move_on_after(_LAST_SEND_LIMIT) as scope:
                    scope.shield = True
                    await send(message)
            else:
                await send(message)

        await super().handle_request(nursery, request, send_last_shielded)


class App(QuartTrio):
    """QuartTrio, with the last send of each response shielded (see the module's docstring)."""

    asgi_http_class = _HTTPConnection
