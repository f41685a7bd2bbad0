"""What a burst of 8 streaming requests costs the HTTP stack alone, with no model behind it.

    python bench/http_floor.py [--rounds 3] [--bursts 100] [--json OUT]

serve_bench.py's time to first token at 8 streams is the HTTP stack, the
IPC and the engine together; burst_timeline.py says where it goes inside
mlxtrio. This says what the first part cannot go below: the same burst of
8 streaming chat completions at once, from serve_bench's client, sent to

- ``quart``: mlxtrio's own Quart-Trio app class (``mlxtrio.api._asgi.App``) on
  Hypercorn with mlxtrio's Hypercorn settings, one endpoint that reads the
  JSON body and streams one event (text and usage) and ``[DONE]``, as
  mlxtrio answers a one-token request in one write;
- ``asgi``: the same endpoint as a bare ASGI function on the same Hypercorn;
- ``mlxtrio``: the real server with the demo model, ``max_tokens`` 1, so
  the burst's time to first token is the whole path with a step that is as
  cheap as it gets, and its prompts hit the prompt cache after the first.

Each round runs every stack in turn (a fresh server process each), ``--bursts``
bursts after one warm-up burst; a burst's figure is its median time to first
text. It reports each stack's median over all bursts, and by round.
bench/burst_probe.py gives the engine's own share in-process (its
"together, cached" pattern).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

STACKS = ("quart", "asgi", "mlxtrio")
# One event with text and the usage, as serve_bench's client needs both.
_EVENT = (
    b'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}], '
    b'"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}\n\ndata: [DONE]\n\n'
)


def quart_app():  # noqa: ANN201
    import trio
    from quart import Response, request

    from mlxtrio.api._asgi import App

    app = App("http_floor")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": []}  # what serve_bench's wait_ready asks for

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        json.loads(await request.get_data(cache=False))

        async def body():  # noqa: ANN202
            await trio.lowlevel.checkpoint()  # the wait for the worker's frame, at its cheapest
            yield _EVENT

        response = Response(body(), content_type="text/event-stream")
        response.timeout = None
        return response

    return app


async def asgi_app(scope, receive, send) -> None:  # noqa: ANN001
    import trio

    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] == "GET":  # /v1/models, what serve_bench's wait_ready asks for
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"object": "list", "data": []}'})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    json.loads(b"".join(chunks))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await trio.lowlevel.checkpoint()
    await send({"type": "http.response.body", "body": _EVENT, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def serve(stack: str, port: int) -> None:
    import trio
    from hypercorn.trio import serve as hypercorn_serve

    from mlxtrio._server import _hypercorn_config

    config = _hypercorn_config("127.0.0.1", port, 1.0)
    config.errorlog = None
    trio.run(hypercorn_serve, quart_app() if stack == "quart" else asgi_app, config)


async def bursts(url: str, model: str, count: int) -> list[float]:
    import trio

    from serve_bench import _stream_one, prompts
    from sse_client import LeanClient

    texts = prompts(8)
    http = LeanClient()
    medians = []
    try:
        for number in range(count + 1):  # the first is a warm-up
            ttfts: list[float] = []

            async def one(text: str, ttfts: list[float] = ttfts) -> None:
                ttfts.append((await _stream_one(http, url, model, text, 1)).ttft)

            async with trio.open_nursery() as nursery:
                for text in texts:
                    nursery.start_soon(one, text)
            if number:
                medians.append(statistics.median(ttfts) * 1e3)
    finally:
        await http.aclose()
    return medians


@contextlib.asynccontextmanager
async def floor_server(stack: str) -> AsyncIterator[tuple[str, int]]:
    """``quart`` or ``asgi`` served by a child process on a free port, ready: its URL and pid."""
    from serve_bench import wait_ready

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "--serve", stack, str(port)])
    try:
        await wait_ready(f"http://127.0.0.1:{port}", process, limit=60)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(30)


async def run_stack(stack: str, count: int) -> list[float]:
    if stack == "mlxtrio":
        from bench_models import build
        from server_process import mlxtrio_server

        cache = Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
        model = build("demo", cache / "models" / "demo", cache_dir=cache)
        async with mlxtrio_server(cache, MLX_MODEL=str(model)) as server:
            return await bursts(server.openai_url, str(model), count)
    async with floor_server(stack) as (url, _pid):
        return await bursts(url, "floor", count)


def main() -> None:
    import trio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bursts", type=int, default=100, help="measured bursts per stack and round")
    parser.add_argument("--stacks", nargs="+", choices=STACKS, default=list(STACKS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    by_round: dict[str, list[float]] = {stack: [] for stack in args.stacks}
    every: dict[str, list[float]] = {stack: [] for stack in args.stacks}
    for number in range(args.rounds):
        # Each round in another order, so that no stack always follows the same one.
        order = args.stacks[number % len(args.stacks) :] + args.stacks[: number % len(args.stacks)]
        for stack in order:
            started = time.perf_counter()
            medians = trio.run(run_stack, stack, args.bursts)
            every[stack].extend(medians)
            by_round[stack].append(round(statistics.median(medians), 2))
            print(f"round {number + 1} {stack}: burst p50 {by_round[stack][-1]} ms ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = {stack: round(statistics.median(values), 2) for stack, values in every.items()}
    result = {
        "burst": 8,
        "bursts_per_round": args.bursts,
        "cpus": os.cpu_count(),
        "burst_p50_ms_median": summary,
        "burst_p50_ms_by_round": by_round,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
