"""Embeddings per second through the real server: batches of short inputs to each embedding model.

    python -m bench.embed_bench [--models demo-embed demo-embed-decoder] [--batches 1 32 256]
        [--words 5] [--rounds 8] [--repeat 3] [--models-dir DIR] [--json OUT]

One ``mlxtrio serve`` of this checkout (a child process, its demo models in
``$MLX_CACHE_DIR`` or /tmp/mlxtrio-bench-cache). ``--models`` names the
server's built-in embedding models or the real shapes of
bench/embed_shapes.py (``bert-base``, ``qwen3-embedding-0.6b``), built into
``--models-dir`` and served through a config file. Per model, loaded first
(``/admin/load``) and warmed by one unmeasured request of each batch size,
then per batch size ``--rounds`` requests in a row from one client, each of
``batch`` inputs of ``--words`` words and a number (every one of them
different: nothing is reused): embeddings per second (inputs over the
phase's wall time), the median request's latency and tokens per input. The models and batch sizes take turns in each of
``--repeat`` runs, so that a slow spell of the machine falls on all of them;
the figures are medians over the runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from ._common import ROOT, write_json
from .embed_shapes import EMBED_SHAPES, build_embed_model
from .server_process import mlxtrio_server

MODELS = ["demo-embed", "demo-embed-decoder"]
BATCHES = [1, 32, 256]
_WORDS = "river stone light paper cloud market window garden letter engine silver morning harbor valley".split()
# Every input's number, never repeated.
_numbers = itertools.count()


def short_inputs(count: int, words: int = 5) -> list[str]:
    """``count`` texts of ``words`` words and a number, each unlike any other."""
    texts = []
    for _ in range(count):
        number = next(_numbers)
        chosen = [_WORDS[(number * 7 + step * 3) % len(_WORDS)] for step in range(words)]
        texts.append(f"{' '.join(chosen)} {number}")
    return texts


async def embed(client: httpx.AsyncClient, model: str, batch: int, words: int = 5) -> int:
    """One request of ``batch`` inputs of ``words`` words; its prompt tokens."""
    response = await client.post("/v1/embeddings", json={"model": model, "input": short_inputs(batch, words)})
    if response.status_code != 200:
        raise RuntimeError(f"{model}, {batch} inputs: {response.status_code} {response.text}")
    answer = response.json()
    assert len(answer["data"]) == batch, answer
    return answer["usage"]["prompt_tokens"]


async def phase(client: httpx.AsyncClient, model: str, batch: int, rounds: int, words: int) -> dict:
    latencies, tokens = [], 0
    started = time.perf_counter()
    for _ in range(rounds):
        sent = time.perf_counter()
        tokens += await embed(client, model, batch, words)
        latencies.append(time.perf_counter() - sent)
    wall = time.perf_counter() - started
    return {
        "embeddings_per_s": batch * rounds / wall,
        "latency_p50_s": statistics.median(latencies),
        "tokens_per_input": tokens / (batch * rounds),
    }


async def run_once(client: httpx.AsyncClient, models: list[str], batches: list[int], rounds: int, words: int) -> dict:
    run: dict = {model: {} for model in models}
    for model in models:
        for batch in batches:
            run[model][batch] = measured = await phase(client, model, batch, rounds, words)
            print(f"  {model}, batch {batch}: {measured}", file=sys.stderr, flush=True)
    return run


async def bench_against(
    openai_url: str, admin_url: str, models: list[str], batches: list[int], rounds: int, repeat: int, words: int = 5
) -> list:
    """The runs against a server already up (the tests' too)."""
    async with httpx.AsyncClient(base_url=openai_url, timeout=600) as client, httpx.AsyncClient(base_url=admin_url, timeout=600) as admin:
        for model in models:
            (await admin.post("/admin/load", json={"model": model})).raise_for_status()
            for batch in batches:
                await embed(client, model, batch, words)  # unmeasured: each shape's first pass
        return [await run_once(client, models, batches, rounds, words) for _ in range(repeat)]


def models_config(models: list[str], models_dir: Path) -> str:
    """The config file's ``[models]`` table for the real shapes among ``models``, each built into ``models_dir``."""
    entries = [
        f'[models."{name}"]\npath = "{build_embed_model(name, models_dir / name).resolve()}"\ntask = "embed"\n'
        for name in models
        if name in EMBED_SHAPES
    ]
    return "\n".join(entries)


async def bench(models: list[str], batches: list[int], rounds: int, repeat: int, words: int, models_dir: Path) -> list:
    cache = Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
    with tempfile.NamedTemporaryFile("w", prefix="embed-bench-", suffix=".toml") as config:
        config.write(models_config(models, models_dir))
        config.flush()
        async with mlxtrio_server(cache, MLX_CONFIG=config.name) as server:
            return await bench_against(server.openai_url, server.admin_url, models, batches, rounds, repeat, words)


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
    parser.add_argument("--models", nargs="+", choices=MODELS + list(EMBED_SHAPES), default=MODELS)
    parser.add_argument("--batches", type=int, nargs="+", default=BATCHES)
    parser.add_argument("--words", type=int, default=5, help="words in each input, besides its number")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/mlxtrio-bench-models"), help="where the real shapes are built")
    parser.add_argument("--rounds", type=int, default=8, help="requests in a row per model and batch size in each run")
    parser.add_argument("--repeat", type=int, default=3, help="runs, the models and batch sizes taking turns in each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = trio.run(bench, args.models, args.batches, args.rounds, args.repeat, args.words, args.models_dir)
    figures = summary(runs, args.models, args.batches)
    if args.json:
        write_json(args.json, {"models": args.models, "batches": args.batches, "words": args.words, "rounds": args.rounds, "repeat": args.repeat,
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
