"""Quantized products on MLX's CPU backend, by type: the kernel alone, and a model as mlx-lm and as mlxtrio load it.

    python bench/quantized_cpu_probe.py [--model qwen2.5-0.5b-4bit] [--models-dir DIR] [--json OUT]

Two parts, each in milliseconds, medians:

- ``kernel_ms``: ``mx.quantized_matmul`` of an (M, 896) input against a
  4-bit (4864, 896) weight in groups of 64 (the MLP's up projection of the
  Qwen2.5-0.5B shape), for M = 1, 8 and 32, with input and scales in
  bfloat16, float16 and float32;
- ``model_ms``: one decode step of one sequence (median of 3), and a prefill
  chunk of 16 prompt tokens (one, after one untimed), on ``--model`` as
  ``mlx_lm.load`` gives it and after the worker's ``speed_up_quantized``
  (worker/_quantized.py), which on the CPU backend computes quantized
  products in float32.

The process is pinned to its last allowed CPU first, as the worker pins
itself on the CPU backend (``MLX_WORKER_CPUS=auto``). Meant for the CPU
backend; elsewhere it measures what it measures, and ``speed_up_quantized``
does not change the type there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
from bench_models import add_model_options, build_chosen
from mlx_lm.models.cache import make_prompt_cache

from mlxtrio.tuning import allowed_cpus, pin_this_process
from mlxtrio.worker._quantized import speed_up_quantized


def median_ms(run, repeats: int) -> float:  # noqa: ANN001
    run()  # compiled and allocated once before timing
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1e3, 2)


def kernel_ms() -> dict:
    weight = mx.random.normal((4864, 896), key=mx.random.key(0))
    result: dict = {}
    for dtype in (mx.bfloat16, mx.float16, mx.float32):
        packed, scales, biases = mx.quantize(weight.astype(dtype), group_size=64, bits=4)
        for rows in (1, 8, 32):
            x = mx.random.normal((rows, 896), key=mx.random.key(1)).astype(dtype)
            mx.eval(packed, scales, biases, x)

            def run(x=x, packed=packed, scales=scales, biases=biases) -> None:  # noqa: ANN001
                mx.eval(mx.quantized_matmul(x, packed, scales, biases, transpose=True, group_size=64, bits=4))

            name = f"{str(dtype).split('.')[-1]}, M={rows}"
            result[name] = median_ms(run, 3)
            print(json.dumps({"kernel": name, "ms": result[name]}), flush=True)
    return result


def model_ms(model) -> dict:  # noqa: ANN001
    def decode() -> None:
        mx.eval(model(mx.array([[11]]), cache=decode_cache))

    def prefill() -> None:
        cache = make_prompt_cache(model)
        model(mx.array([list(range(100, 116))]), cache=cache)
        mx.eval([c.state for c in cache])

    decode_cache = make_prompt_cache(model)
    mx.eval(model(mx.array([list(range(100, 116))]), cache=decode_cache))
    # Few repeats: as mlx-lm loads a 4-bit model, a prefill chunk takes half a minute here.
    return {"decode_step": median_ms(decode, 3), "prefill_16_tokens": median_ms(prefill, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.set_defaults(model="qwen2.5-0.5b-4bit")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cpus = allowed_cpus()
    if cpus:
        pin_this_process(cpus[-1:])
    result: dict = {"device": str(mx.default_device()), "model": args.model, "kernel_ms": kernel_ms(), "model_ms": {}}
    model, _ = mlx_lm.load(str(build_chosen(args)))
    result["model_ms"]["as mlx-lm loads it"] = model_ms(model)
    print(json.dumps(result["model_ms"]), flush=True)
    speed_up_quantized(model)
    result["model_ms"]["as mlxtrio's worker loads it"] = model_ms(model)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
