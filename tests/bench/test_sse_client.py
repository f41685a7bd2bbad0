"""The benchmarks' streaming client (bench/sse_client.py) against servers of known behaviour.

The figures in docs/PERFORMANCE.md are only as good as this client's
reading: every line of every response, keep-alive connections reused only
when both sides allow, HTTP/1.0 bodies ended by the close (as mlx_lm.server
sends them), and failures reported rather than taken for short answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from bench.sse_client import LeanClient, RequestFailed

from ..helpers import bounded

EVENTS = [b'data: {"n": %d}\n\n' % index for index in range(5)] + [b"data: [DONE]\n\n"]
LINES = [line.decode() for event in EVENTS for line in event.split(b"\n")[:-1]]


async def each_request(stream: trio.SocketStream) -> AsyncIterator[None]:
    """Once per complete request on the connection (headers, then a Content-Length body), until it closes."""
    buffered = b""
    while True:
        while b"\r\n\r\n" not in buffered:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffered += data
        head, buffered = buffered.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(buffered) < length:
            buffered += await stream.receive_some(65536)
        buffered = buffered[length:]
        yield


def chunked(events: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events) + b"0\r\n\r\n"


class Server:
    """A raw TCP server: answers each request as told, and closes the connection when told to."""

    def __init__(self, answer) -> None:  # noqa: ANN001 - (stream, request number) -> awaitable
        self.answer = answer
        self.connections = 0
        self.requests = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            async for _ in each_request(stream):
                self.requests += 1
                if not await self.answer(stream, self.requests):
                    return
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()


async def keep_alive(stream, number):  # noqa: ANN001, ANN201, ARG001
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for event in EVENTS:  # one chunk per event, sent apart, as a server streams them
        await stream.send_all(chunked([event])[:-5])
        await trio.sleep(0)
    await stream.send_all(b"0\r\n\r\n")
    return True


async def http10(stream, number):  # noqa: ANN001, ANN201, ARG001
    await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + b"".join(EVENTS))
    return False  # the close ends the body


async def refuse(stream, number):  # noqa: ANN001, ANN201, ARG001
    body = b'{"error": {"message": "busy"}}'
    await stream.send_all(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return True


async def cut_off(stream, number):  # noqa: ANN001, ANN201, ARG001
    await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(EVENTS[:2])[:-5])
    return False  # closed mid-body


async def serving(nursery: trio.Nursery, answer) -> tuple[Server, str]:  # noqa: ANN001
    server = Server(answer)
    listeners = await nursery.start(trio.serve_tcp, server.handle, 0)
    return server, f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1/chat/completions"


async def read_all(client: LeanClient, url: str) -> list[str]:
    async with client.stream_lines(url, {"stream": True}) as lines:
        return [line async for line in lines]


@pytest.mark.parametrize(
    ("answer", "connections"), [(keep_alive, 1), (http10, 2)], ids=["keep-alive reused", "HTTP/1.0 ended by the close"]
)
@bounded(20)
async def test_reads_every_line_and_reuses_a_connection_only_when_allowed(answer, connections):  # noqa: ANN001
    async with trio.open_nursery() as nursery:
        server, url = await serving(nursery, answer)
        client = LeanClient()
        assert await read_all(client, url) == LINES
        assert await read_all(client, url) == LINES
        assert (server.requests, server.connections) == (2, connections)
        await client.aclose()
        nursery.cancel_scope.cancel()


@bounded(20)
async def test_a_connection_the_server_closed_while_idle_is_replaced():
    async def once_then_close(stream, number):  # noqa: ANN001, ANN202
        await keep_alive(stream, number)
        return False  # closes after a complete keep-alive response, as an idle timeout would

    async with trio.open_nursery() as nursery:
        server, url = await serving(nursery, once_then_close)
        client = LeanClient()
        assert await read_all(client, url) == LINES
        await trio.testing.wait_all_tasks_blocked()  # the server's close is in
        assert await read_all(client, url) == LINES
        assert server.connections == 2
        await client.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("answer", [refuse, cut_off], ids=["status 429", "cut off mid-body"])
@bounded(20)
async def test_failures_raise(answer):  # noqa: ANN001
    async with trio.open_nursery() as nursery:
        _, url = await serving(nursery, answer)
        client = LeanClient()
        with pytest.raises(RequestFailed):
            await read_all(client, url)
        nursery.cancel_scope.cancel()


@bounded(20)
async def test_too_slow_raises():
    async def stall(stream, number):  # noqa: ANN001, ANN202, ARG001
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        _, url = await serving(nursery, stall)
        client = LeanClient(timeout=0.2)
        with pytest.raises(RequestFailed, match="within 0.2 s"):
            await read_all(client, url)
        nursery.cancel_scope.cancel()


@bounded(20)
async def test_nothing_listening_raises():
    with trio.socket.socket() as unused:  # a port nothing listens on
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(RequestFailed):
        await read_all(LeanClient(), f"http://127.0.0.1:{port}/v1/chat/completions")
