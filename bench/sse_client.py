"""The benchmarks' streaming HTTP client: h11 over Trio TCP streams, lines of the response as they come.

Why not httpx: a load generator shares the machine with the server it
measures, and on a 2-core machine the orchestrator's core. httpx costs
several times the CPU per streaming request (its request and response
models, the connection pool, anyio's Trio backend; docs/PERFORMANCE.md,
"Method"), and what the client spends is taken from the server under test.
``serve_bench --client httpx`` keeps httpx, to compare.

h11 does the HTTP/1.1 (and 1.0) framing: chunked bodies, keep-alive, bodies
ended by the connection's close (mlx_lm.server answers in HTTP/1.0).
Connections are kept per host and reused when both sides allow it; one
found closed by the server while idle is replaced, as httpx's pool does.
"""

from __future__ import annotations

import contextlib
import json
import select
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import attrs
import h11
import trio

__all__ = ["HttpxClient", "LeanClient", "RequestFailed"]


class RequestFailed(Exception):
    """The request did not complete: refused (a status other than 200), cut off, or too slow."""


@attrs.define(eq=False)
class _Connection:
    stream: trio.SocketStream
    protocol: h11.Connection = attrs.Factory(lambda: h11.Connection(h11.CLIENT))

    def closed_while_idle(self) -> bool:
        # Readable while idle: the server closed it (or sent something it should not have).
        readable, _, _ = select.select([self.stream.socket.fileno()], [], [], 0)
        return bool(readable)


@attrs.define(eq=False)
class LeanClient:
    """POST a JSON body, read the response line by line; connections kept alive per host."""

    timeout: float = 600
    _idle: dict[tuple[str, int], list[_Connection]] = attrs.field(factory=dict, init=False)

    async def _connection(self, host: str, port: int) -> _Connection:
        idle = self._idle.setdefault((host, port), [])
        while idle:
            connection = idle.pop()
            if not connection.closed_while_idle():
                return connection
            await connection.stream.aclose()
        return _Connection(await trio.open_tcp_stream(host, port))

    @contextlib.asynccontextmanager
    async def stream_lines(self, url: str, body: dict) -> AsyncIterator[AsyncIterator[str]]:
        """The response's lines (without their ends), once its status is 200."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        payload = json.dumps(body).encode()
        connection: _Connection | None = None
        with trio.move_on_after(self.timeout) as scope:
            try:
                connection = await self._connection(host, port)
                protocol = connection.protocol
                request = h11.Request(
                    method="POST",
                    target=parts.path or "/",
                    headers=[("Host", parts.netloc), ("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
                )
                await connection.stream.send_all(protocol.send(request) + protocol.send(h11.Data(data=payload)) + protocol.send(h11.EndOfMessage()))
                response = await self._next(connection)
                if not isinstance(response, h11.Response) or response.status_code != 200:
                    raise RequestFailed(f"status {getattr(response, 'status_code', '?')}")
                yield self._lines(connection)
                if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
                    protocol.start_next_cycle()
                    self._idle[(host, port)].append(connection)
                    connection = None
            except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
            finally:
                if connection is not None:
                    await connection.stream.aclose()
        if scope.cancelled_caught:
            raise RequestFailed(f"no complete response within {self.timeout} s")

    async def _next(self, connection: _Connection) -> h11.Event:
        protocol = connection.protocol
        while (event := protocol.next_event()) is h11.NEED_DATA:
            protocol.receive_data(await connection.stream.receive_some(65536))
        return event

    async def _lines(self, connection: _Connection) -> AsyncIterator[str]:
        pending = b""
        while True:
            event = await self._next(connection)
            if isinstance(event, h11.Data):
                *lines, pending = (pending + event.data).split(b"\n")
                for line in lines:
                    yield line.rstrip(b"\r").decode()
            elif isinstance(event, h11.EndOfMessage):
                if pending:
                    yield pending.rstrip(b"\r").decode()
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise RequestFailed("the server closed the connection mid-response")

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                await connection.stream.aclose()
        self._idle.clear()


@attrs.define(eq=False)
class HttpxClient:
    """The same interface over httpx, to compare with LeanClient."""

    client: object  # httpx.AsyncClient

    @contextlib.asynccontextmanager
    async def stream_lines(self, url: str, body: dict) -> AsyncIterator[AsyncIterator[str]]:
        import httpx

        try:
            async with self.client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    raise RequestFailed(f"status {response.status_code}")
                yield response.aiter_lines()
        except httpx.HTTPError as exc:
            raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self.client.aclose()
