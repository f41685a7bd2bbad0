"""Connections that fail inside Hypercorn end alone: the server, its other requests and its workers go on (issue 22, item 5)."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest
import trio
from hypercorn.protocol.h11 import H11Protocol

from ..helpers import bounded, loaded_entry, worker_entry

LONG = {"model": "demo", "prompt": "Tell me everything.", "max_tokens": 400, "ignore_eos": True}


def _half_sent(host: str) -> bytes:
    """Headers that promise a body of 1,000 bytes, and one byte of it."""
    return f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode()


# Run in its own process, so that its closes land independently of the
# server's scheduler: connections that send a half-sent body, then close at
# about the moment the body timeout answers 408, when Hypercorn's error
# response for the short body races its own send_eof (compare pgjones/hypercorn#203).
_BURST = """
import random, sys, trio
host, port, count, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
head = sys.stdin.buffer.read()
async def one():
    try:
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(head)
        await trio.sleep(after + random.uniform(-0.01, 0.01))
        await stream.aclose()
    except OSError:
        pass
async def main():
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
trio.run(main)
"""


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host.strip("[]"), int(port)


async def _still_serving(client, admin, pid: int) -> None:  # noqa: ANN001
    """The same worker, and the server answers as before."""
    assert (await client.get("/health")).status_code == 200
    response = await client.post("/v1/completions", json={**LONG, "max_tokens": 3})
    assert response.status_code == 200, response.text
    assert (await worker_entry(admin))["pid"] == pid


@bounded(60)
async def test_an_exception_in_one_connection_ends_that_connection_only(server, client, admin, monkeypatch, caplog):
    """Deterministic: Hypercorn's answer to a half-sent body raises, as it does when it loses the race with its own send_eof."""
    pid = (await loaded_entry(admin))["pid"]

    async def collide(self, status_code: int) -> None:  # noqa: ANN001, ARG001
        raise trio.BusyResourceError("another task is currently sending data on this SocketStream")

    monkeypatch.setattr(H11Protocol, "_send_error_response", collide)
    caplog.set_level(logging.WARNING, logger="mlxtrio")
    address = _address(server.openai_url)
    async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as streamed:
        lines = streamed.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        for _ in range(5):
            stream = await trio.open_tcp_stream(*address)
            await stream.send_all(_half_sent(address[0]))
            # The body ends short: Hypercorn answers it with its error response, which raises.
            await stream.send_eof()
            # Closed by the server once that connection's task has ended.
            while await stream.receive_some(65536):
                pass
            await stream.aclose()
        # The stream that was running meanwhile on another connection finishes.
        rest = [line async for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][len("data: ") :])["choices"][0]["finish_reason"] == "length"
    failures = [record for record in caplog.records if "connection" in record.getMessage() and "BusyResourceError" in record.getMessage()]
    assert len(failures) == 5, [record.getMessage() for record in caplog.records]
    await _still_serving(client, admin, pid)


@pytest.mark.parametrize("server_settings", [{"body_timeout": 0.5}])
@bounded(60)
async def test_half_sent_bodies_closed_at_the_body_timeout_leave_the_server_up(server, client, admin, caplog):
    """As reported: connections that send part of a body and close when the 408 goes out, from another process."""
    pid = (await loaded_entry(admin))["pid"]
    host, port = _address(server.openai_url)
    # Alone, a half-sent body gets its 408 at the body timeout, and the connection is closed.
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(_half_sent(host))
    started, answer = time.monotonic(), b""
    while chunk := await stream.receive_some(65536):
        answer += chunk
    await stream.aclose()
    assert 0.5 <= time.monotonic() - started < 2.0
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert "body timeout" in json.loads(body)["error"]["message"], answer
    for _ in range(3):
        await trio.run_process(
            [sys.executable, "-c", _BURST, host, str(port), "300", "0.5"], stdin=_half_sent(host)
        )
        await _still_serving(client, admin, pid)
    # Nor a traceback for what the clients did: the races end their connections quietly.
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
