"""Single-stream decode, mlxtrio against in-process mlx-lm, request by request in pairs.

    python bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 [--models-dir DIR] [--pairs 32] [--max-tokens 128]
        [--pin-in-process] [--in-process stream_generate|engine] [--side NAME[:KEY=VALUE,...]]... [--json OUT]
    python bench/single_stream_pairs.py --summarise RUN.json|RUN.log...    # several runs' rounds together

serve_bench.py measures in-process mlx-lm and then the server, a minute or
more apart; on a GPU machine the rate of the same code drifts by tens of
percent over minutes (docs/PERFORMANCE.md), more than the 3% the issue's
single-stream target is about. Here both stay loaded side by side: the
in-process baseline (``stream_generate``, mlx-lm's own loop) in a child
process of its own, and ``mlxtrio serve`` with its worker. Each pair sends
the same prompt to both, one after the other, the order alternating (ABBA),
so a slow spell of the machine falls on both sides of a pair. While one
side decodes, the other is idle (blocked on a pipe, or on its semaphore).

With ``--side`` given more than once, several servers are loaded at once,
each with its own environment (``nocache:MLX_PROMPT_CACHE_BYTES=0``, say,
or ``held:VARIANT_FRAME_HOLD=32``, bench/serve_variant.py), and each pair becomes a
round over all of them, in-process first and last by turns (ABCCBA).

Reports each side's median decode rate (tokens after the first, over the
time after the first), the per-pair ratio's median, quartiles and 90%
bootstrap interval, and how many pairs the server won. The client is the
same streaming client as serve_bench's; tokens are the
server's own count.

On Linux it also reads, around each request, the scheduler's account of the
thread that decodes (the worker's main thread; the in-process child's):
nanoseconds it ran on a CPU and nanoseconds it waited for one
(``/proc/PID/task/PID/schedstat``), per token of the request. A side slower
with the same CPU time per token waited more (for the GPU, or for a CPU);
one with more CPU time per token did more work, or the same work slower.
That speaks for a GPU, where the decoding thread builds and launches each
step; on MLX's CPU backend the computation runs on threads of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import attrs
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_models import add_model_options, build_chosen  # noqa: E402
from serve_bench import _stream_one, prompts, timed_stream_generate  # noqa: E402
from server_process import mlxtrio_server  # noqa: E402
from sse_client import LeanClient  # noqa: E402

IN_PROCESS = "in_process"


def thread_times(pid: int) -> tuple[int, int] | None:
    """Nanoseconds the process's main thread has run on a CPU and waited for one; None where unknown."""
    try:
        run, wait, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(run), int(wait)


def with_times(result: dict, pid: int | None, before: tuple[int, int] | None) -> dict:
    """``result`` with the decoding thread's CPU and run-queue time per token of the request, in µs."""
    after = thread_times(pid) if pid is not None else None
    if before is None or after is None or result.get("tokens", 0) < 1:
        return result
    tokens = result["tokens"]
    return {**result, "cpu_us_per_token": (after[0] - before[0]) / tokens / 1e3,
            "runq_us_per_token": (after[1] - before[1]) / tokens / 1e3}


async def loaded_worker(admin_url: str) -> dict:
    """The loaded worker's /admin/status entry: its pid, the malloc it runs with (``allocator``), ..."""
    import httpx
    from faults import worker_entry

    async with httpx.AsyncClient(base_url=admin_url, timeout=30) as admin:
        return await worker_entry(admin)


def timed_engine(engine, request_id: int, text: str, max_tokens: int) -> tuple[float, float, int]:  # noqa: ANN001
    """One chat request through mlxtrio's engine, driven as the worker drives it: seconds to the
    first text, tokens/s after it, and tokens (the worker's request path, without the worker)."""
    from mlxtrio import _protocol as p

    start = time.perf_counter()
    engine.admit(p.Generate(request_id, p.SamplingParams(max_tokens=max_tokens, temperature=0.0), (p.ChatMessage("user", text),)))
    first = last = None
    tokens = 0
    while engine.active:
        deltas, failures = engine.step()
        assert not failures, failures
        for delta in deltas:
            tokens = max(tokens, delta.completion_tokens)
            if delta.text or delta.finish_reason:
                last = time.perf_counter()
                first = first or last
    return first - start, (tokens - 1) / (last - first), tokens


def baseline_child(model_path: str, max_tokens: int, pin: bool, kind: str = "stream_generate") -> None:
    """The in-process side: reads a prompt per line, answers with one JSON line (ttft, tokens/s).

    ``kind`` ``engine``: mlxtrio's ``BatchEngine`` as the worker sets it up
    (its load, its prompt cache), driven step by step in this process instead
    of ``stream_generate``: the served request's path, without the worker
    process, its ring and its orchestrator.
    """
    if pin:
        from mlxtrio.tuning import allowed_cpus, batch_this_process, pin_this_process

        # Where mlxtrio's worker goes on the CPU backend (MLX_WORKER_CPUS=auto): the last allowed core,
        # under SCHED_BATCH as the worker on one core is (since d13c475).
        pin_this_process(allowed_cpus()[-1:])
        batch_this_process()
    import mlx_lm

    if kind == "engine":
        from bench_models import load_as_worker

        from mlxtrio.worker._engine import BatchEngine

        model, tokenizer = load_as_worker(Path(model_path))
        engine = BatchEngine(model, tokenizer, context_length=None)
    else:
        model, tokenizer = mlx_lm.load(model_path)
    print(json.dumps({"ready": True}), flush=True)
    for request_id, line in enumerate(sys.stdin, start=1):
        if kind == "engine":
            ttft, rate, tokens = timed_engine(engine, request_id, json.loads(line), max_tokens)
        else:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": json.loads(line)}], add_generation_prompt=True)
            ttft, rate, tokens = timed_stream_generate(model, tokenizer, prompt, max_tokens)
        print(json.dumps({"ttft": ttft, "tps": rate, "tokens": tokens}), flush=True)


class Baseline:
    """The child process that holds mlx-lm in-process; one request at a time."""

    def __init__(self, model_path: str, max_tokens: int, pin: bool, kind: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--baseline-child", model_path, str(max_tokens), "pin" if pin else "free", kind],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert json.loads(self._line())["ready"]

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process baseline exited ({self.process.wait()})")
        return line

    def request(self, prompt: str) -> dict:
        self.process.stdin.write(json.dumps(prompt) + "\n")
        self.process.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def quartiles(values: list[float]) -> list[float]:
    return [round(value, 3) for value in statistics.quantiles(values, n=4)] if len(values) > 1 else values


def interval90(values: list[float], *, draws: int = 2000) -> list[float]:
    """A 90% bootstrap interval of the median of ``values`` (seeded: the same rows give the same interval)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return [round(medians[int(0.05 * draws)], 3), round(medians[int(0.95 * draws)], 3)]


@attrs.frozen
class Side:
    """One ``mlxtrio serve`` to compare: its name, and the environment it runs with.

    ``VARIANT_...`` settings in it start the server through
    bench/serve_variant.py (step frames sent in bunches, the worker on CPUs of its own).
    """

    name: str
    env: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Side:
        """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE``; a part with no ``=`` continues the value before (a CPU list)."""
        name, _, settings = text.partition(":")
        env: dict[str, str] = {}
        key = None
        for part in filter(None, settings.split(",")):
            if "=" in part:
                key, value = part.split("=", 1)
                env[key] = value
            elif key is not None:
                env[key] += "," + part
            else:
                raise ValueError(f"{part!r} is not KEY=VALUE")
        return cls(name, env)

    def command(self) -> list[str] | None:
        variant = any(key.startswith("VARIANT_") for key in self.env)
        return [sys.executable, str(HERE / "serve_variant.py"), "--serve"] if variant else None


async def run(
    model_path: Path, sides: list[Side], pairs: int, max_tokens: int, warm: int, pin: bool, kind: str = "stream_generate"
) -> dict:
    texts = prompts(8)
    baseline = await trio.to_thread.run_sync(Baseline, str(model_path), max_tokens, pin, kind)
    cache = Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            client = LeanClient()
            stack.push_async_callback(client.aclose)
            requesters = {}
            # Each side's worker process, once loaded: its main thread decodes.
            pids: dict[str, int] = {}
            allocators: dict[str, str | None] = {}
            schedulings: dict[str, str | None] = {}
            admin_urls: dict[str, str] = {}
            for side in sides:
                server = await stack.enter_async_context(
                    mlxtrio_server(cache, command=side.command(), MLX_MODEL=str(model_path), **side.env)
                )

                async def ours(prompt: str, url: str = server.openai_url, name: str = side.name) -> dict:
                    before = thread_times(pids[name]) if name in pids else None
                    outcome = await _stream_one(client, url, str(model_path), prompt, max_tokens)
                    result = {"ttft": outcome.ttft, "tps": (outcome.tokens - 1) / outcome.span, "tokens": outcome.tokens}
                    return with_times(result, pids.get(name), before)

                requesters[side.name] = ours
                admin_urls[side.name] = server.admin_url

            async def theirs(prompt: str) -> dict:
                before = thread_times(baseline.process.pid)
                result = await trio.to_thread.run_sync(baseline.request, prompt)
                return with_times(result, baseline.process.pid, before)

            order = [IN_PROCESS, *requesters]
            requesters[IN_PROCESS] = theirs
            # Warm every side (compilation per shape on CUDA, caches) with every prompt the pairs use.
            for text in texts[:warm]:
                for name in order:
                    await requesters[name](text)
            for name, url in admin_urls.items():
                worker = await loaded_worker(url)
                pids[name], allocators[name], schedulings[name] = worker["pid"], worker.get("allocator"), worker.get("scheduling")
            rows = []
            for index in range(pairs):
                text = texts[index % len(texts)]
                # In-process first then last, by turns (ABBA with two sides, ABCCBA with three).
                turn = order if index % 2 == 0 else order[::-1]
                row = {"prompt": index % len(texts)}
                for name in turn:
                    row[name] = await requesters[name](text)
                rows.append(row)
                print(f"  pair {index}: " + ", ".join(f"{name} {row[name]['tps']:.1f}" for name in order) + " tok/s",
                      file=sys.stderr, flush=True)
    finally:
        await trio.to_thread.run_sync(baseline.close)
    summary = {name: side_summary(rows, name) for name in order[1:]}
    # The first side's figures also at the top level, under the names of the two-sided runs before.
    first = summary[order[1]]
    return {
        "in_process_tps_median": statistics.median(row[IN_PROCESS]["tps"] for row in rows),
        "in_process_ttft_median_s": statistics.median(row[IN_PROCESS]["ttft"] for row in rows),
        "mlxtrio_tps_median": first["tps_median"],
        "mlxtrio_ttft_median_s": first["ttft_median_s"],
        "ratio_median": first["ratio_median"],
        "ratio_quartiles": first["ratio_quartiles"],
        "ratio_interval90": first["ratio_interval90"],
        "pairs_mlxtrio_faster": first["pairs_faster"],
        "sides": {
            side.name: {
                "env": side.env,
                "worker_allocator": allocators[side.name],
                "worker_scheduling": schedulings[side.name],
                **summary[side.name],
            }
            for side in sides
        },
        "pairs": rows,
    }


def side_summary(rows: list[dict], name: str, *, against: str = IN_PROCESS) -> dict:
    """Side ``name``'s rate, and its ratio to side ``against`` round by round (TTFT where the rows have it)."""
    ratios = [row[name]["tps"] / row[against]["tps"] for row in rows]
    summary = {
        "tps_median": statistics.median(row[name]["tps"] for row in rows),
        "ratio_median": statistics.median(ratios),
        "ratio_quartiles": quartiles(ratios),
        "ratio_interval90": interval90(ratios),
        "pairs_faster": sum(ratio >= 1 for ratio in ratios),
    }
    if all("ttft" in row[name] for row in rows):
        summary["ttft_median_s"] = statistics.median(row[name]["ttft"] for row in rows)
    timed = [row for row in rows if "cpu_us_per_token" in row[name] and "cpu_us_per_token" in row[against]]
    if timed:
        cpu_ratios = [row[name]["cpu_us_per_token"] / row[against]["cpu_us_per_token"] for row in timed]
        summary["decoding_thread"] = {
            "cpu_us_per_token_median": round(statistics.median(row[name]["cpu_us_per_token"] for row in timed), 1),
            "runq_us_per_token_median": round(statistics.median(row[name]["runq_us_per_token"] for row in timed), 1),
            f"{against}_cpu_us_per_token_median": round(statistics.median(row[against]["cpu_us_per_token"] for row in timed), 1),
            f"{against}_runq_us_per_token_median": round(statistics.median(row[against]["runq_us_per_token"] for row in timed), 1),
            "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
            "cpu_ratio_interval90": interval90(cpu_ratios),
        }
    return summary


def rows_from(path: Path) -> list[dict]:
    """The rounds of one run: its JSON, or its stderr log (whose pair lines hold every side's rate)."""
    if path.suffix == ".json":
        return json.loads(path.read_text())["pairs"]
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("  pair "):
            rates = dict(re.findall(r"(\w+) ([\d.]+)(?=,| tok/s)", line.split(":", 1)[1]))
            rows.append({name: {"tps": float(rate)} for name, rate in rates.items()})
    return rows


def summarise(paths: list[Path]) -> dict:
    """Every side of the runs in ``paths`` together, against in-process and against the first side."""
    rows = [row for path in paths for row in rows_from(path)]
    sides = [name for name, value in rows[0].items() if isinstance(value, dict) and name != IN_PROCESS]
    return {
        "rounds": len(rows),
        "in_process_tps_median": statistics.median(row[IN_PROCESS]["tps"] for row in rows),
        "sides": {
            name: {**side_summary(rows, name), f"against_{sides[0]}": side_summary(rows, name, against=sides[0])}
            for name in sides
        },
    }


def main() -> None:
    if sys.argv[1:2] == ["--baseline-child"]:
        baseline_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "pin", sys.argv[5])
        return
    if sys.argv[1:2] == ["--summarise"]:
        # python bench/single_stream_pairs.py --summarise RUN.json RUN.log ...: runs cut short keep their logs.
        print(json.dumps(summarise([Path(arg) for arg in sys.argv[2:]]), indent=1))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--warm", type=int, default=8, help="unmeasured requests to each side first, one per prompt")
    parser.add_argument(
        "--pin-in-process", action="store_true",
        help="the in-process side on the last allowed core under SCHED_BATCH, as mlxtrio runs its worker on the CPU backend (Linux)",
    )
    parser.add_argument(
        "--side", action="append", type=Side.parse, metavar="NAME[:KEY=VALUE,...]",
        help="an mlxtrio server to compare, with extra environment (repeatable; default: one, 'mlxtrio', as it is)",
    )
    parser.add_argument(
        "--in-process", choices=["stream_generate", "engine"], default="stream_generate",
        help="the in-process side: mlx-lm's own loop (the ceiling), or mlxtrio's engine driven in that process",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sides = args.side or [Side("mlxtrio", {})]
    if len({side.name for side in sides} | {IN_PROCESS}) != len(sides) + 1:
        parser.error("side names must differ from each other and from 'in_process'")
    if args.pin_in_process and not hasattr(os, "sched_setaffinity"):
        parser.error("--pin-in-process needs Linux (os.sched_setaffinity)")
    model_path = build_chosen(args)
    result = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "mlx_worker_cpus": os.environ.get("MLX_WORKER_CPUS", "auto"),
        "in_process_pinned": args.pin_in_process,
        "in_process": args.in_process,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        **trio.run(run, model_path, sides, args.pairs, args.max_tokens, args.warm, args.pin_in_process, args.in_process),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({key: value for key, value in result.items() if key != "pairs"}, indent=1))


if __name__ == "__main__":
    main()
