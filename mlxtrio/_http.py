"""Hypercorn's ``serve``, with each connection's failure kept to that connection.

Hypercorn (0.18, trio worker) runs every connection as a task of one nursery
of its ``worker_serve`` (``TCPServer.run``, which also holds that connection's
ASGI app tasks). An exception that leaves it fails that nursery, so
``serve`` raises, the server's root nursery fails and the whole server goes
down, its workers killed with it, for what one client did. Such exceptions
do happen: a client that closes a half-sent body as the body timeout answers
408 makes Hypercorn's 400 for the short body race its own ``send_eof``, and
trio raises ``BusyResourceError`` out of ``send_all`` (issue 22;
pgjones/hypercorn#203 is another escape of the same kind). Rather than
chase each one, every connection runs as ``_ContainedTCPServer``: an
exception is logged and ends that connection, whose socket trio's
``serve_listeners`` then closes. Cancellation (a graceful stop's deadline)
passes through untouched.

``worker_serve`` builds its connections from the module global
``hypercorn.trio.run.TCPServer``, with no argument to pass another class:
``serve`` puts ours there, a subclass, so the rest of Hypercorn sees no
difference.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import hypercorn.config
import hypercorn.trio
import hypercorn.trio.run
import trio
from hypercorn.events import Closed, Event
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import Framework

__all__ = ["serve"]

log = logging.getLogger("mlxtrio.http")


class _ContainedTCPServer(TCPServer):
    """One connection: an exception from it, Hypercorn's or the app's, ends this connection only."""

    async def protocol_send(self, event: Event) -> None:
        try:
            await super().protocol_send(event)
        except trio.BusyResourceError:
            # Another send (the connection's send_eof, as it closes) holds the
            # socket: this connection is ending, and a send to it is lost as to
            # a broken one, which Hypercorn handles. Raised, it reaches the app
            # (a traceback as "Error in ASGI Framework" for each client that
            # closes a half-sent body as its 408 goes out, issue 22).
            await self.protocol.handle(Closed())

    async def run(self) -> None:
        peer = _peer(self.stream)  # before it is closed
        try:
            await super().run()
        except* Exception as group:
            # A client can cause these at will: one line each, the traceback only at DEBUG.
            errors = "; ".join(f"{type(error).__name__}: {error}" for error in _leaves(group))
            log.warning("a connection from %s failed and was closed: %s", peer, errors)
            log.debug("the connection's failure", exc_info=group)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _peer(stream: object) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError, ValueError):
        return "an unknown client"
    return f"{host}:{port}"


async def serve(
    app: Framework,
    config: hypercorn.config.Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``hypercorn.trio.serve``, each connection contained (see the module's docstring)."""
    hypercorn.trio.run.TCPServer = _ContainedTCPServer  # type: ignore[misc]
    try:
        await hypercorn.trio.serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)
    except (OSError, BaseExceptionGroup) as exc:
        if not any(isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE for leaf in _leaves(exc)):
            raise
        # The OS does not say which address: name it, the operator has two ports to check.
        raise OSError(errno.EADDRINUSE, f"{os.strerror(errno.EADDRINUSE)}: {', '.join(config.bind)}") from None
