"""Embeddings per second through the real server: batches of short inputs to each embedding model.

    python -m bench.embed_bench [--models demo-embed demo-embed-decoder] [--batches 1 32 256]
        [--rounds 8] [--repeat 3] [--json OUT]

One ``mlxtrio serve`` of this checkout (a child process, its demo models in
``$MLX_CACHE_DIR`` or /tmp/mlxtrio-bench-cache). Per model, loaded first
(``/admin/load``) and warmed by one unmeasured request of each batch size,
then per batch size ``--rounds`` requests in a row from one client, each of
``batch`` short inputs (a few words, every one of them different: nothing is
reused): embeddings per second (inputs over the phase's wall time) and the
median request's latency. The models and batch sizes take turns in each of
``--repeat`` runs, so that a slow spell of the machine falls on all of them;
the figures are medians over the runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import trio

from ._common import ROOT, write_json
from .server_process import mlxtrio_server

MODELS = ["demo-embed", "demo-embed-decoder"]
BATCHES = [1, 32, 256]
_WORDS = "river stone light paper cloud market window garden letter engine silver morning harbor valley".split()
# Every input's number, never repeated.
_numbers = itertools.count()


def short_inputs(count: int) -> list[str]:
    """``count`` short texts (five words and a number), each unlike any other."""
    texts = []
    for _ in range(count):
        number = next(_numbers)
        words = [_WORDS[(number * 7 + step * 3) % len(_WORDS)] for step in range(5)]
        texts.append(f"{' '.join(words)} {number}")
    return texts


async def embed(client: httpx.AsyncClient, model: str, batch: int) -> int:
    """One request of ``batch`` short inputs; its prompt tokens."""
    response = await client.post("/v1/embeddings", json={"model": model, "input": short_inputs(batch)})
    response.raise_for_status()
    answer = response.json()
    assert len(answer["data"]) == batch, answer
    return answer["usage"]["prompt_tokens"]


async def phase(client: httpx.AsyncClient, model: str, batch: int, rounds: int) -> dict:
    latencies, tokens = [], 0
    started = time.perf_counter()
    for _ in range(rounds):
        sent = time.perf_counter()
        tokens += await embed(client, model, batch)
        latencies.append(time.perf_counter() - sent)
    wall = time.perf_counter() - started
    return {
        "embeddings_per_s": batch * rounds / wall,
        "latency_p50_s": statistics.median(latencies),
        "tokens_per_input": tokens / (batch * rounds),
    }


async def run_once(client: httpx.AsyncClient, models: list[str], batches: list[int], rounds: int) -> dict:
    run: dict = {model: {} for model in models}
    for model in models:
        for batch in batches:
            run[model][batch] = measured = await phase(client, model, batch, rounds)
            print(f"  {model}, batch {batch}: {measured}", file=sys.stderr, flush=True)
    return run


async def bench_against(openai_url: str, admin_url: str, models: list[str], batches: list[int], rounds: int, repeat: int) -> list:
    """The runs against a server already up (the tests' too)."""
    async with httpx.AsyncClient(base_url=openai_url, timeout=600) as client, httpx.AsyncClient(base_url=admin_url, timeout=600) as admin:
        for model in models:
            (await admin.post("/admin/load", json={"model": model})).raise_for_status()
            for batch in batches:
                await embed(client, model, batch)  # unmeasured: each shape's first pass
        return [await run_once(client, models, batches, rounds) for _ in range(repeat)]


async def bench(models: list[str], batches: list[int], rounds: int, repeat: int) -> list:
    cache = Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
    async with mlxtrio_server(cache) as server:
        return await bench_against(server.openai_url, server.admin_url, models, batches, rounds, repeat)


def summary(runs: list, models: list[str], batches: list[int]) -> dict:
    """Each figure's median over the runs, with every run's embeddings per second."""
    return {
        model: {
            batch: {
                **{key: statistics.median(run[model][batch][key] for run in runs) for key in ("embeddings_per_s", "latency_p50_s", "tokens_per_input")},
                "embeddings_per_s_runs": [run[model][batch]["embeddings_per_s"] for run in runs],
            }
            for batch in batches
        }
        for model in models
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batches", type=int, nargs="+", default=BATCHES)
    parser.add_argument("--rounds", type=int, default=8, help="requests in a row per model and batch size in each run")
    parser.add_argument("--repeat", type=int, default=3, help="runs, the models and batch sizes taking turns in each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = trio.run(bench, args.models, args.batches, args.rounds, args.repeat)
    figures = summary(runs, args.models, args.batches)
    if args.json:
        write_json(args.json, {"models": args.models, "batches": args.batches, "rounds": args.rounds, "repeat": args.repeat,
                               "checkout": str(ROOT), "summary": figures, "runs": runs})
    print(f"medians of {args.repeat} runs, {args.rounds} requests in a row per model and batch size")
    print("| model | inputs a request | embeddings/s | [runs] | latency p50 ms | tokens an input |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        for batch in args.batches:
            f = figures[model][batch]
            spread = ", ".join(f"{rate:.0f}" for rate in f["embeddings_per_s_runs"])
            print(f"| {model} | {batch} | {f['embeddings_per_s']:.0f} | [{spread}] | {f['latency_p50_s'] * 1e3:.1f} | {f['tokens_per_input']:.1f} |")


if __name__ == "__main__":
    main()
