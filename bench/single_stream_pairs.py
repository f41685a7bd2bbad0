"""Single-stream decode, mlxtrio against in-process mlx-lm, request by request in pairs.

    python bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 [--models-dir DIR] [--pairs 32] [--max-tokens 128]
        [--pin-in-process] [--json OUT]

serve_bench.py measures in-process mlx-lm and then the server, a minute or
more apart; on a GPU machine the rate of the same code drifts by tens of
percent over minutes (docs/PERFORMANCE.md), more than the 3% the issue's
single-stream target is about. Here both stay loaded side by side: the
in-process baseline (``stream_generate``, mlx-lm's own loop) in a child
process of its own, and ``mlxtrio serve`` with its worker. Each pair sends
the same prompt to both, one after the other, the order alternating (ABBA),
so a slow spell of the machine falls on both sides of a pair. While one
side decodes, the other is idle (blocked on a pipe, or on its semaphore).

Reports each side's median decode rate (tokens after the first, over the
time after the first), the per-pair ratio's median and quartiles, and how
many pairs the server won. The client is the same Trio + httpx streaming
client as serve_bench's; tokens are the server's own count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_models import add_model_options, build_chosen  # noqa: E402
from serve_bench import _stream_one, prompts, timed_stream_generate  # noqa: E402
from server_process import mlxtrio_server  # noqa: E402
from sse_client import LeanClient  # noqa: E402


def baseline_child(model_path: str, max_tokens: int, pin: bool) -> None:
    """The in-process side: reads a prompt per line, answers with one JSON line (ttft, tokens/s)."""
    if pin:
        from mlxtrio._affinity import allowed_cpus, pin_this_process

        # Where mlxtrio's worker goes on the CPU backend (MLX_WORKER_CPUS=auto): the last allowed core.
        pin_this_process(allowed_cpus()[-1:])
    import mlx_lm

    model, tokenizer = mlx_lm.load(model_path)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": json.loads(line)}], add_generation_prompt=True)
        ttft, rate = timed_stream_generate(model, tokenizer, prompt, max_tokens)
        print(json.dumps({"ttft": ttft, "tps": rate}), flush=True)


class Baseline:
    """The child process that holds mlx-lm in-process; one request at a time."""

    def __init__(self, model_path: str, max_tokens: int, pin: bool) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--baseline-child", model_path, str(max_tokens), "pin" if pin else "free"],
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


async def run(model_path: Path, pairs: int, max_tokens: int, warm: int, pin: bool) -> dict:
    texts = prompts(8)
    baseline = await trio.to_thread.run_sync(Baseline, str(model_path), max_tokens, pin)
    try:
        async with mlxtrio_server(Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache")), MLX_MODEL=str(model_path)) as server:
            client = LeanClient()
            try:

                async def ours(prompt: str) -> dict:
                    outcome = await _stream_one(client, server.openai_url, str(model_path), prompt, max_tokens)
                    return {"ttft": outcome.ttft, "tps": (outcome.tokens - 1) / outcome.span, "tokens": outcome.tokens}

                async def theirs(prompt: str) -> dict:
                    return await trio.to_thread.run_sync(baseline.request, prompt)

                # Warm both (compilation per shape on CUDA, caches) with every prompt the pairs use.
                for text in texts[:warm]:
                    await ours(text)
                    await theirs(text)
                rows = []
                for index in range(pairs):
                    text = texts[index % len(texts)]
                    if index % 4 in (0, 3):  # ABBA
                        base, mine = await theirs(text), await ours(text)
                    else:
                        mine, base = await ours(text), await theirs(text)
                    rows.append({"prompt": index % len(texts), "in_process": base, "mlxtrio": mine,
                                 "ratio": mine["tps"] / base["tps"]})
                    print(f"  pair {index}: in-process {base['tps']:.1f}, mlxtrio {mine['tps']:.1f} tok/s "
                          f"({rows[-1]['ratio']:.3f}×)", file=sys.stderr, flush=True)
            finally:
                await client.aclose()
    finally:
        await trio.to_thread.run_sync(baseline.close)
    ratios = [row["ratio"] for row in rows]
    return {
        "in_process_tps_median": statistics.median(row["in_process"]["tps"] for row in rows),
        "mlxtrio_tps_median": statistics.median(row["mlxtrio"]["tps"] for row in rows),
        "ratio_median": statistics.median(ratios),
        "ratio_quartiles": quartiles(ratios),
        "pairs_mlxtrio_faster": sum(ratio >= 1 for ratio in ratios),
        "in_process_ttft_median_s": statistics.median(row["in_process"]["ttft"] for row in rows),
        "mlxtrio_ttft_median_s": statistics.median(row["mlxtrio"]["ttft"] for row in rows),
        "pairs": rows,
    }


def main() -> None:
    if sys.argv[1:2] == ["--baseline-child"]:
        baseline_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "pin")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--warm", type=int, default=8, help="unmeasured requests to each side first, one per prompt")
    parser.add_argument(
        "--pin-in-process", action="store_true",
        help="the in-process side on the last allowed core, where mlxtrio pins its worker on the CPU backend (Linux)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.pin_in_process and not hasattr(os, "sched_setaffinity"):
        parser.error("--pin-in-process needs Linux (os.sched_setaffinity)")
    model_path = build_chosen(args)
    result = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "mlx_worker_cpus": os.environ.get("MLX_WORKER_CPUS", "auto"),
        "in_process_pinned": args.pin_in_process,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        **trio.run(run, model_path, args.pairs, args.max_tokens, args.warm, args.pin_in_process),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({key: value for key, value in result.items() if key != "pairs"}, indent=1))


if __name__ == "__main__":
    main()
