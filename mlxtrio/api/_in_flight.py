"""The requests in flight, and how a graceful stop ends those still running when its grace period is over.

Hypercorn ends a graceful stop by cancelling every connection's task at its
deadline: a stream cut that way stops without an error event or ``[DONE]``,
and looks in the log like a client that left (499). So the server cuts them
itself first (``_server.py``): each wait that may outlast the grace period
(a view, which holds a non-streaming request's whole generation; each wait
of a stream's body for its next event) runs in a scope from ``cuttable``,
and ``cut`` cancels them all, and every such scope entered after it. A view
cut that way answers 503 ``shutting_down``; a stream sends that error as its
last event. Hypercorn's own deadline comes a little later, for the last
words to go out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import trio

from .._errors import ErrorKind, ServerError

__all__ = ["InFlight"]


@attrs.define(eq=False)
class InFlight:
    """One server's requests in flight (both apps'), and their cut."""

    # Requests begun and not yet over, streamed bodies included.
    count: int = 0
    # Whether the cut happened: then every cuttable scope is cancelled as it is entered.
    is_cut: bool = False
    _scopes: set[trio.CancelScope] = attrs.Factory(set)

    @contextmanager
    def request(self) -> Iterator[None]:
        """Around one request, from its headers to the last byte of its response."""
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1

    @contextmanager
    def cuttable(self, deadline: float = math.inf) -> Iterator[trio.CancelScope]:
        """A cancel scope (with ``deadline``) that the cut cancels; after it, ``is_cut`` tells the two apart."""
        scope = trio.CancelScope(deadline=deadline)
        if self.is_cut:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    def cut(self) -> None:
        self.is_cut = True
        for scope in self._scopes:
            scope.cancel()

    @staticmethod
    def error() -> ServerError:
        """What a request that the cut ended is told."""
        return ServerError(ErrorKind.UNAVAILABLE, "the server is shutting down and its grace period is over", code="shutting_down")
