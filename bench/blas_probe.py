"""Float32 matrix products and the demo model's decode on MLX's CPU backend, with each BLAS.

    python bench/blas_probe.py [--blas mlx auto PATH ...] [--repeats 5] [--json OUT]

MLX's Linux CPU wheels link the reference BLAS bundled with them;
mlxtrio's worker loads OpenBLAS before MLX where the system has it
(mlxtrio/tuning/_blas.py). This measures what that changes, each BLAS in a process
of its own, pinned to one CPU as the worker is, the library loaded the
worker's way (``load_worker_blas``):

- float32 products ``x @ w.T`` of M rows against the Qwen2.5-0.5B shape's
  projections (896x896, 4864x896, 896x4864) and the demo model's
  (64x64, 128x64, 512x64), at M = 1, 8 and 256 (one sequence's decode step,
  eight sequences', a prefill chunk): median ms of ``--repeats``;
- the demo model's single-sequence decode with mlx-lm's ``stream_generate``
  (tokens after the first over the time after the first, 256 tokens), and a
  batched decode step of 8 and 32 sequences through mlx-lm's
  ``BatchGenerator``: median of ``--repeats``.

``mlx`` is the BLAS MLX was built with, ``auto`` what the worker's default
finds (OpenBLAS, or nothing), a path a library to load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

SHAPES = [(896, 896), (4864, 896), (896, 4864), (64, 64), (128, 64), (512, 64)]  # (out, in)
ROWS = (1, 8, 256)


def measure(repeats: int) -> dict:
    """In the child: after the BLAS is loaded."""
    import mlx.core as mx

    from mlxtrio.tuning import blas_in_use

    def median_ms(run, times: int) -> float:  # noqa: ANN001
        samples = []
        for _ in range(times):
            started = time.perf_counter()
            mx.eval(run())
            samples.append(time.perf_counter() - started)
        return round(statistics.median(samples) * 1e3, 4)

    products = {}
    for out_features, in_features in SHAPES:
        weight = mx.random.normal((out_features, in_features))
        for rows in ROWS:
            x = mx.random.normal((rows, in_features))
            mx.eval(weight, x)
            median_ms(lambda: x @ weight.T, 3)  # warm-up
            products[f"{rows}x{in_features}->{out_features}"] = median_ms(lambda: x @ weight.T, repeats * 4)
    return {"blas_in_use": blas_in_use(), "product_ms": products, **decode(repeats)}


def decode(repeats: int) -> dict:
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.generate import BatchGenerator

    from bench_models import build, load_as_worker
    from serve_bench import prompts

    cache = Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
    model, tokenizer = load_as_worker(build("demo", cache / "models" / "demo", cache_dir=cache))
    rates = []
    for _ in range(repeats + 1):
        count = 0
        for _response in stream_generate(model, tokenizer, prompts(1)[0], max_tokens=256):
            count += 1
            if count == 1:
                first = time.perf_counter()
        rates.append((count - 1) / (time.perf_counter() - first))
    steps = {}
    for batch in (8, 32):
        texts = [tokenizer.encode(text) for text in prompts(batch)]
        samples = []
        for _ in range(repeats + 1):
            generator = BatchGenerator(model, max_tokens=64, completion_batch_size=batch, prefill_batch_size=batch)
            generator.insert(texts, max_tokens=[64] * batch)
            while not generator._generation_batch.uids:  # noqa: SLF001 - prefill done
                generator.next()
            for _ in range(4):  # into steady decoding
                generator.next()
            started = time.perf_counter()
            for _ in range(32):
                generator.next()
            mx.eval(generator._generation_batch._next_tokens)  # noqa: SLF001
            samples.append((time.perf_counter() - started) / 32)
            generator.close()
        steps[str(batch)] = round(statistics.median(samples[1:]) * 1e3, 4)
    return {"single_stream_tps": round(statistics.median(rates[1:]), 1), "batched_step_ms": steps}


def child(blas: str, repeats: int) -> None:
    from mlxtrio.tuning import allowed_cpus, pin_this_process
    from mlxtrio.tuning import load_worker_blas, parse_worker_blas

    cpu = allowed_cpus()[-1:]
    load_worker_blas(parse_worker_blas(blas).library(), cpus=cpu)
    pin_this_process(cpu)
    print(json.dumps(measure(repeats)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blas", nargs="+", default=["mlx", "auto"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    for blas in args.blas:
        done = subprocess.run(
            [sys.executable, __file__, "--child", blas, str(args.repeats)], capture_output=True, text=True, check=True
        )
        results[blas] = json.loads(done.stdout.strip().splitlines()[-1])
        print(blas, json.dumps(results[blas]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
