"""CPU per streaming request, process by process and thread by thread: the load's client, the orchestrator, the worker.

    python bench/orchestrator_cpu.py [--stacks quart asgi mlxtrio] [--max-tokens 1] [--bursts 200] [--rounds 3] [--json OUT]

Time to first token at 8 streams on a 2-core machine is bounded by how much
CPU the orchestrator spends taking in a burst (docs/PERFORMANCE.md), and
that time is noisy: it moves with what else the machine runs. The CPU each
thread spent is steadier. This sends serve_bench's bursts of 8 streaming
chat completions to the real server (demo model by default, prompts from
the prompt cache after the first burst) and reads each thread's time on a
CPU, its time waiting for one and the times it was switched in from
``/proc/PID/task/TID/schedstat`` (Linux only), before and after the
measured bursts. A fresh
server each round; figures are µs per request, medians over the rounds.

``--max-tokens 1`` makes each request all intake and end: what a burst's
first token waits behind. ``--max-tokens 128`` adds the per-token path.
Per process, its main thread is ``main`` and its other threads (a blocked
send's thread from ``trio.to_thread`` in the orchestrator, MLX's in the
worker) are summed as ``others``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))
from bench_models import add_model_options, build_chosen  # noqa: E402
from server_process import children  # noqa: E402


def thread_times(pid: int) -> dict[int, tuple[int, int, int]]:
    """Each thread's (ns on a CPU, ns waiting in a run queue, time slices) so far; threads that ended are gone."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stats:
                on_cpu, waiting, slices = map(int, stats.read().split())
        except OSError:  # ended meanwhile
            continue
        times[int(tid)] = (on_cpu, waiting, slices)
    return times


def snapshot(processes: dict[str, int]) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(process, main | others) -> summed times and slices."""
    summed: dict[tuple[str, str], list[int]] = {}
    for name, pid in processes.items():
        for tid, figures in thread_times(pid).items():
            entry = summed.setdefault((name, "main" if tid == pid else "others"), [0, 0, 0])
            for index, value in enumerate(figures):
                entry[index] += value
    return {key: (value[0], value[1], value[2]) for key, value in summed.items()}


STACKS = ("quart", "asgi", "mlxtrio")


@contextlib.asynccontextmanager
async def running(stack: str, model_path: Path) -> AsyncIterator[tuple[str, str, dict[str, int]]]:
    """(URL, model id, the server's processes by name) while ``stack`` serves."""
    if stack == "mlxtrio":
        from server_process import mlxtrio_server

        cache = Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
        async with mlxtrio_server(cache, MLX_MODEL=str(model_path)) as server:
            yield server.openai_url, str(model_path), {"orchestrator": server.process.pid}
        return
    from http_floor import floor_server

    async with floor_server(stack) as (url, pid):
        yield url, "floor", {"orchestrator": pid}


async def one_round(stack: str, model_path: Path, max_tokens: int, bursts: int, burst: int) -> dict:
    from serve_bench import _stream_one, prompts
    from sse_client import LeanClient

    texts = prompts(burst)
    http = LeanClient()
    ttfts: list[float] = []
    try:
        async with running(stack, model_path) as (url, model, server_processes):

            async def one(text: str, sink: list[float]) -> None:
                sink.append((await _stream_one(http, url, model, text, max_tokens)).ttft)

            async def one_burst(sink: list[float]) -> None:
                async with trio.open_nursery() as nursery:
                    for text in texts:
                        nursery.start_soon(one, text, sink)

            for _ in range(5):  # warm-up: the worker's start, the prompt cache, MLX's kernels
                await one_burst([])
            processes = {"client": os.getpid(), **server_processes}
            if stack == "mlxtrio":
                (processes["worker"],) = children(processes["orchestrator"])
            before = snapshot(processes)
            started = time.perf_counter()
            for _ in range(bursts):
                await one_burst(ttfts)
            wall = time.perf_counter() - started
            after = snapshot(processes)
    finally:
        await http.aclose()
    requests = bursts * burst
    per_request = {
        ".".join(key): {
            "on_cpu_us": round((after[key][0] - before[key][0]) / requests / 1e3, 1),
            "run_queue_us": round((after[key][1] - before[key][1]) / requests / 1e3, 1),
            # Times the threads were switched in: a thread preempted at every wake-up shows here.
            "slices": round((after[key][2] - before[key][2]) / requests, 2),
        }
        for key in sorted(after)
        if key in before
    }
    return {
        "per_request": per_request,
        "wall_per_burst_ms": round(wall / bursts * 1e3, 3),
        "ttft_p50_ms": round(statistics.median(ttfts) * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--burst", type=int, default=8, help="requests sent at once")
    parser.add_argument("--bursts", type=int, default=200, help="measured bursts per round, after five unmeasured")
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="a fresh server each")
    parser.add_argument("--stacks", nargs="+", choices=STACKS, default=["mlxtrio"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_path = build_chosen(args)
    rounds: dict[str, list[dict]] = {stack: [] for stack in args.stacks}
    for number in range(args.rounds):
        # Each round in another order, so that no stack always follows the same one.
        shift = number % len(args.stacks)
        for stack in args.stacks[shift:] + args.stacks[:shift]:
            rounds[stack].append(trio.run(one_round, stack, model_path, args.max_tokens, args.bursts, args.burst))
            line = ", ".join(f"{key} {value['on_cpu_us']}" for key, value in rounds[stack][-1]["per_request"].items())
            print(f"round {number + 1} {stack}: µs on a CPU per request: {line}; "
                  f"TTFT p50 {rounds[stack][-1]['ttft_p50_ms']} ms", flush=True)
    summary = {
        stack: {
            key: {
                measure: statistics.median(one["per_request"][key][measure] for one in runs if key in one["per_request"])
                for measure in ("on_cpu_us", "run_queue_us", "slices")
            }
            for key in runs[0]["per_request"]
        }
        for stack, runs in rounds.items()
    }
    result = {
        "model": args.model,
        "burst": args.burst,
        "bursts": args.bursts,
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "per_request_median": summary,
        "ttft_p50_ms_by_round": {stack: [one["ttft_p50_ms"] for one in runs] for stack, runs in rounds.items()},
        "rounds": rounds,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
