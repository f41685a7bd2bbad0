"""Fan-out of incoming messages to per-request Trio memory channels.

One long-lived task per channel receives and decodes, and hands each message
to ``route``; each message carries a key (the server uses its request id) and
goes to the memory channel opened for that key. Delivery never blocks the
reader: the per-route buffers are unbounded, which is safe because the
producer is bounded (a request ends after ``max_tokens``), and a slow client
must not stall every other request.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

import attrs
import trio

__all__ = ["MessageRouter", "RouterStatistics"]

M = TypeVar("M")


@attrs.frozen
class RouterStatistics:
    open_routes: int
    delivered: int
    # Messages for no open route (a request that ended while the worker was still sending): dropped.
    unrouted: int


class MessageRouter(Generic[M]):
    """Routes messages by ``key(message)`` to whoever opened a route for that key; the rest are dropped."""

    def __init__(self, *, key: Callable[[M], Hashable | None]) -> None:
        self._key = key
        self._routes: dict[Hashable, trio.MemorySendChannel[M]] = {}
        self._delivered = 0
        self._unrouted = 0

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
            return
        try:
            send.send_nowait(message)
        except trio.BrokenResourceError:
            # The route's owner has stopped listening; it is going away.
            self._unrouted += 1
            return
        self._delivered += 1

    def close_all(self, final: Callable[[Hashable], M] | None = None) -> None:
        """End every open route, after a last message from ``final(key)`` if given.

        The orchestrator calls this when the worker dies, so every in-flight
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

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(open_routes=len(self._routes), delivered=self._delivered, unrouted=self._unrouted)
