"""Fan-out of incoming messages to per-request Trio memory channels.

One long-lived task per channel receives and decodes; each message carries a
key (the server uses its request id) and goes to the memory channel opened for
that key. Delivery never blocks the reader: the per-route buffers are
unbounded, which is safe because the producer is bounded (a request ends after
``max_tokens``), and a slow client must not stall every other request.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

import attrs
import trio

from ._codec import Codec
from ._trio import TrioChannel

__all__ = ["MessageRouter", "RouterStatistics"]

M = TypeVar("M")


@attrs.frozen
class RouterStatistics:
    open_routes: int
    delivered: int
    unrouted: int


class MessageRouter(Generic[M]):
    """Routes messages by ``key(message)`` to whoever opened a route for that key.

    Messages whose key is None, or whose route is already closed (a request
    that was cancelled while the worker was still sending), go to
    ``on_unrouted``.
    """

    def __init__(
        self,
        *,
        key: Callable[[M], Hashable | None],
        on_unrouted: Callable[[M], None] = lambda message: None,
    ) -> None:
        self._key = key
        self._on_unrouted = on_unrouted
        self._routes: dict[Hashable, trio.MemorySendChannel[M]] = {}
        self._delivered = 0
        self._unrouted = 0

    @contextlib.contextmanager
    def open_route(self, key: Hashable) -> Iterator[trio.MemoryReceiveChannel[M]]:
        with self.open_routes([key]) as receive:
            yield receive

    @contextlib.contextmanager
    def open_routes(self, keys: Sequence[Hashable]) -> Iterator[trio.MemoryReceiveChannel[M]]:
        """One channel for the messages of several keys (a request with several choices)."""
        taken = [key for key in keys if key in self._routes]
        if taken or len(set(keys)) != len(keys):
            raise KeyError(f"routes already open, or keys repeated: {taken or list(keys)}")
        send, receive = trio.open_memory_channel[M](math.inf)
        for key in keys:
            self._routes[key] = send
        try:
            with receive:
                yield receive
        finally:
            for key in keys:
                if self._routes.get(key) is send:
                    del self._routes[key]
            send.close()

    def route(self, message: M) -> None:
        key = self._key(message)
        send = self._routes.get(key) if key is not None else None
        if send is None:
            self._unrouted += 1
            self._on_unrouted(message)
            return
        try:
            send.send_nowait(message)
        except trio.BrokenResourceError:
            # The route's owner has stopped listening; it is going away.
            self._unrouted += 1
            self._on_unrouted(message)
            return
        self._delivered += 1

    def close_all(self, final: Callable[[Hashable], M] | None = None) -> None:
        """End every open route, after a last message from ``final(key)`` if given.

        The supervisor calls this when the worker dies, so every in-flight
        request learns of it at once.
        """
        routes, self._routes = self._routes, {}
        closed: set[int] = set()
        for key, send in routes.items():
            if id(send) in closed:
                continue  # a channel shared by several keys gets one final message
            closed.add(id(send))
            if final is not None:
                with contextlib.suppress(trio.BrokenResourceError):
                    send.send_nowait(final(key))
            send.close()

    async def pump(self, channel: TrioChannel, codec: Codec[M]) -> None:
        """Receive, decode and route until cancelled or the channel breaks."""
        while True:
            self.route(codec.decode(await channel.receive()))

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(open_routes=len(self._routes), delivered=self._delivered, unrouted=self._unrouted)
