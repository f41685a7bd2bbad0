"""The requests open on one worker process: each one's Deltas (or vectors), its failure, and the answers to pings.

A request's ``n`` choices are ``n`` sequences with consecutive ids, read
through one ``Events``. The worker's messages reach them through a
``MessageRouter`` keyed by request id; when the process dies, every open
request receives the reason at once, as the last thing it reads.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence

import attrs
import trio

from .. import _protocol as p
from .._errors import ErrorKind, ServerError
from ..ipc import MessageRouter, RouterStatistics

__all__ = ["PING_TIMEOUT", "Events", "RequestStreams"]

# How long a ping waits for its answer.
PING_TIMEOUT = 5.0
# A request the worker failed: OpenAI's error code for its kind, where the worker gave none.
_FAILURE_CODES = {
    ErrorKind.INVALID_REQUEST: "invalid_request",
    ErrorKind.INTERNAL: "generation_failed",
    ErrorKind.OUT_OF_MEMORY: "out_of_memory",
}


@attrs.frozen
class _Admission:
    """A request the worker took in (``p.Admitted`` names several)."""

    request_id: int
    prompt_tokens: int


@attrs.frozen
class _WorkerGone:
    """The last thing an open request receives when its worker dies."""

    error: ServerError


class Events:
    """A request's Deltas, from all its choices; raises ServerError if it fails or the worker dies."""

    def __init__(self, route: trio.MemoryReceiveChannel, request_ids: Sequence[int]) -> None:
        self._route = route
        self.first_id = request_ids[0]
        self._choice_of = {request_id: index for index, request_id in enumerate(request_ids)}
        self._unfinished = set(request_ids)

    @property
    def finished(self) -> bool:
        return not self._unfinished

    def unfinished(self) -> list[int]:
        return sorted(self._unfinished)

    def choice(self, delta: p.Delta) -> int:
        """The choice index (0 .. n-1) a delta belongs to."""
        return self._choice_of[delta.request_id]

    def __aiter__(self) -> Events:
        return self

    async def admitted(self) -> int:
        """Until the worker has taken the request in: its prompt's tokens. Raises ServerError if it refuses
        it or the worker dies.

        Only before the first Delta: the worker tells of the admission first.
        """
        message = await self._receive()
        if not isinstance(message, _Admission):
            raise AssertionError(f"a request's first message was not its admission: {message!r}")
        return message.prompt_tokens

    async def embedded(self) -> p.Embedded:
        """An embedding request's vectors; raises ServerError if the worker refuses it or dies."""
        while not isinstance(message := await self._receive(), p.Embedded):
            pass  # an admission, should the worker tell of one
        return message

    async def __anext__(self) -> p.Delta:
        while True:
            if self.finished:
                raise StopAsyncIteration
            message = await self._receive()
            if isinstance(message, p.Delta):
                return message

    async def _receive(self) -> p.Delta | p.Embedded | _Admission:
        try:
            message = await self._route.receive()
        except trio.EndOfChannel:
            self._unfinished.clear()
            raise ServerError(ErrorKind.UNAVAILABLE, "the model worker stopped", code="worker_unavailable") from None
        if isinstance(message, _WorkerGone):
            self._unfinished.clear()
            raise message.error
        if isinstance(message, p.RequestFailed):
            # One failed choice fails the request; the others are cancelled on the way out.
            self._unfinished.discard(message.request_id)
            raise ServerError(
                message.kind, message.message, code=message.code or _FAILURE_CODES.get(message.kind), param=message.param
            )
        if isinstance(message, p.Embedded):
            self._unfinished.discard(message.request_id)
        if isinstance(message, p.Delta) and message.finish_reason is not None:
            self._unfinished.discard(message.request_id)
            if message.error is not None:
                raise ServerError(ErrorKind.INVALID_REQUEST, message.error, code="grammar_failed", param=message.error_param)
        return message


@attrs.define(eq=False)
class _Ping:
    done: trio.Event = attrs.Factory(trio.Event)
    answer: p.Pong | None = None


def _request_id(message: p.Delta | p.Embedded | p.RequestFailed | _Admission) -> int:
    return message.request_id


class RequestStreams:
    """The open requests and pings of one worker process, fed by its messages."""

    def __init__(self) -> None:
        self._router: MessageRouter[p.Delta | p.Embedded | p.RequestFailed | _Admission] = MessageRouter(key=_request_id)
        self._next_id = 1
        self._nonces = itertools.count(1)
        self._pings: dict[int, _Ping] = {}
        self.closed = False

    @contextlib.contextmanager
    def open(self, sequences: int) -> Iterator[Events]:
        """``sequences`` new request ids, consecutive (the worker numbers a request's choices from its first)."""
        first = self._next_id
        self._next_id += sequences
        request_ids = range(first, first + sequences)
        with self._router.open_routes(request_ids) as route:
            yield Events(route, request_ids)

    def deliver(self, message: p.ToOrchestrator) -> None:
        """A message from the worker to whoever waits for it (messages for nobody are dropped)."""
        if isinstance(message, p.Step):
            route = self._router.route
            for delta in message.deltas:
                route(delta)
        elif isinstance(message, p.Admitted):
            for request_id, prompt_tokens in zip(message.request_ids, message.prompt_tokens, strict=True):
                self._router.route(_Admission(request_id, prompt_tokens))
        elif isinstance(message, p.RequestFailed | p.Embedded):
            self._router.route(message)
        elif isinstance(message, p.Pong):
            ping = self._pings.get(message.nonce)
            if ping is not None:
                ping.answer = message
                ping.done.set()

    async def ping(self, send: Callable[[p.ToWorker], Awaitable[None]]) -> p.Pong | None:
        """Send a Ping through ``send``; its Pong, or None if none came in time or the process died."""
        nonce = next(self._nonces)
        ping = self._pings[nonce] = _Ping()
        try:
            await send(p.Ping(nonce))
            with trio.move_on_after(PING_TIMEOUT):
                await ping.done.wait()
        finally:
            self._pings.pop(nonce, None)
        return ping.answer

    def close(self, error: ServerError) -> None:
        """The process is gone: every open request reads ``error`` last, and every ping stops waiting."""
        self.closed = True
        self._router.close_all(lambda request_id: _WorkerGone(error))
        for ping in self._pings.values():
            ping.done.set()

    def statistics(self) -> RouterStatistics:
        return self._router.statistics()
