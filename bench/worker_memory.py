"""The worker's resident memory over many requests, with each malloc (MLX_WORKER_ALLOCATOR).

    python bench/worker_memory.py [--allocators system auto] [--rounds 20] [--requests 64] [--json OUT]

A server-wide default that changes the worker's malloc must not change how
its memory grows. For each allocator in turn this starts ``mlxtrio serve``
on the demo model, sends one request to load it, then ``--rounds`` rounds of
``--requests`` streaming chat requests, 8 at a time, each with a prompt of
its own (so the prompt cache keeps taking new entries and evicting old ones
at its byte cap), and reads the worker's resident set (``VmRSS``) after
each round. It reports the series, its peak, the mean of its last third
against that of its middle third (the first fills the prompt cache), and
the worker's allocator as ``/admin/status`` gives it. Linux
only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_bench import _stream_one  # noqa: E402
from server_process import mlxtrio_server  # noqa: E402
from single_stream_pairs import loaded_worker  # noqa: E402
from soak import process_figures  # noqa: E402
from sse_client import LeanClient  # noqa: E402


def resident_mib(pid: int) -> float:
    return process_figures(pid)["rss_kib"] / 1024


async def measure(allocator: str, cache: Path, rounds: int, requests: int, prompt_cache_bytes: int) -> dict:
    async with mlxtrio_server(cache, MLX_WORKER_ALLOCATOR=allocator, MLX_PROMPT_CACHE_BYTES=str(prompt_cache_bytes)) as server:
        client = LeanClient()
        try:
            await _stream_one(client, server.openai_url, "demo", "warm up", 8)
            worker = await loaded_worker(server.admin_url)
            pid, reported = worker["pid"], worker["allocator"]
            series = [resident_mib(pid)]
            sent = 0
            for _ in range(rounds):
                limiter = trio.CapacityLimiter(8)

                async def one(index: int) -> None:
                    async with limiter:
                        prompt = f"Request {index}: tell me about the number {index * 7919 % 100003} and its neighbours."
                        outcome = await _stream_one(client, server.openai_url, "demo", prompt, 32)
                        if outcome.tokens < 1:
                            raise RuntimeError(f"request {index} failed")

                async with trio.open_nursery() as nursery:
                    for index in range(sent, sent + requests):
                        nursery.start_soon(one, index)
                sent += requests
                series.append(resident_mib(pid))
        finally:
            await client.aclose()
    # The first third fills the prompt cache up to its cap; growth is the last third's mean over the middle's.
    third = max(1, len(series) // 3)
    middle, last = series[third : 2 * third], series[2 * third :]
    return {
        "allocator_setting": allocator,
        "allocator_reported": reported,
        "requests": sent,
        "rss_mib": [round(value, 1) for value in series],
        "rss_peak_mib": round(max(series), 1),
        "rss_middle_third_mean_mib": round(sum(middle) / len(middle), 1),
        "rss_last_third_mean_mib": round(sum(last) / len(last), 1),
        "growth_last_over_middle_mib": round(sum(last) / len(last) - sum(middle) / len(middle), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocators", nargs="+", default=["system", "auto"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-cache-bytes", type=int, default=8 << 20, help="small, so that it evicts within the run")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/mlxtrio-bench-models"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [
        trio.run(measure, allocator, args.cache_dir, args.rounds, args.requests, args.prompt_cache_bytes)
        for allocator in args.allocators
    ]
    for result in results:
        print(json.dumps({key: value for key, value in result.items() if key != "rss_mib"}))
        print("  rss MiB by round:", result["rss_mib"])
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()
