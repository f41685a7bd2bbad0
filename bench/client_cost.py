"""CPU per streaming request of the benchmarks' two HTTP clients (bench/sse_client.py), against a server that costs nothing.

    python bench/client_cost.py [--bursts 50] [--json OUT]

On the 2-core CI machine the load's client shares a core with the
orchestrator, so what the client costs is taken from the server under test.
This measures it alone: bursts of eight concurrent streaming POSTs, each
answered by a canned chunked response of eight SSE events from a raw Trio
server in this process, first through httpx, then through h11 driven
directly. It reports this process's CPU seconds per request (both clients
and the canned server; the server's part is the same for both).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import Client, make_client  # noqa: E402

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in [EVENT] * 8 + [b"data: [DONE]\n\n"])
    + b"0\r\n\r\n"
)
BODY = {"model": "m", "messages": [{"role": "user", "content": "x" * 200}], "max_tokens": 8, "stream": True}


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


async def canned(stream: trio.SocketStream) -> None:
    """Answer every request on the connection with RESPONSE."""
    try:
        async for _ in each_request(stream):
            await stream.send_all(RESPONSE)
    except trio.BrokenResourceError:
        pass


async def per_request_cpu(client: Client, url: str, bursts: int) -> float:
    async def one() -> None:
        async with client.stream_lines(url, BODY) as lines:
            async for line in lines:
                if line.startswith("data: {"):
                    json.loads(line[6:])

    async def burst() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)

    for _ in range(3):  # connections open, code warm
        await burst()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(bursts):
        await burst()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / (8 * bursts)


async def run(bursts: int) -> dict:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, canned, 0)
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1/chat/completions"
        results = {}
        for name in ("httpx", "lean"):
            client = make_client(name, connections=12)
            results[name] = await per_request_cpu(client, url, bursts)
            await client.aclose()
        nursery.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cpu = trio.run(run, args.bursts)
    result = {
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "cpu_ms_per_request": {name: round(seconds * 1e3, 3) for name, seconds in cpu.items()},
        "httpx_over_lean": round(cpu["httpx"] / cpu["lean"], 2),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
