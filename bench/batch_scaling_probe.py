"""What one decode step costs at each batch size, in-process: the model alone, and its largest matmul.

    python bench/batch_scaling_probe.py --model qwen2.5-7b-4bit [--models-dir DIR] [--json OUT]

A decode step reads every weight once whatever the batch size, so on an
accelerator a step of 8 sequences should cost about what a step of one does;
that is where continuous batching's throughput comes from. This probe
measures whether it does on the machine at hand, with no server and no
BatchGenerator:

- ``step_ms``: one decode step (one token per sequence, a plain KV cache
  holding 128 tokens of each) of the whole model, at batch sizes 1 to 32;
- ``step_ms_folded``: the same after mlxtrio's worker has folded the
  quantized projections' inputs into matrices (mlxtrio/worker/_quantized.py;
  no change for a model that is not quantized);
- ``mlp_up_ms``: the model's largest projection alone, (B x hidden) times
  (intermediate x hidden), as the model stores it (quantized or not) and, for
  a quantized model, again in bf16.

Each is the median of 20 evaluated runs after 3 unmeasured ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from bench_models import add_model_options, build_chosen
from mlx_lm.models.cache import make_prompt_cache

from mlxtrio.worker._quantized import fold_quantized_inputs

BATCHES = (1, 2, 4, 8, 16, 32)


def timed(run, repeats: int = 20) -> float:  # noqa: ANN001
    for _ in range(3):
        mx.eval(run())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        mx.eval(run())
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def step_ms(model, batch: int, context: int = 128) -> float:  # noqa: ANN001
    cache = make_prompt_cache(model)
    prompt = mx.random.randint(0, 1000, (batch, context))
    mx.eval(model(prompt, cache=cache))
    token = mx.zeros((batch, 1), dtype=mx.int32)

    def run() -> mx.array:
        for layer in cache:
            layer.offset = context  # the same context every time: only the batch size varies
        return model(token, cache=cache)

    return timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_path = build_chosen(args)
    model, _ = mlx_lm.load(str(model_path))
    up = model.layers[0].mlp.up_proj
    result: dict = {
        "model": args.model, "device": str(mx.default_device()), "step_ms": {}, "step_ms_folded": {}, "mlp_up_ms": {},
    }
    dense = None
    if isinstance(up, nn.QuantizedLinear):
        result["mlp_up_bf16_ms"] = {}
        dense = mx.dequantize(up.weight, up.scales, up.biases, group_size=up.group_size, bits=up.bits).astype(mx.bfloat16)
    hidden = model.args.hidden_size
    for batch in BATCHES:
        result["step_ms"][batch] = round(step_ms(model, batch), 2)
        x = mx.random.normal((batch, hidden)).astype(mx.bfloat16)
        result["mlp_up_ms"][batch] = round(timed(lambda: up(x)), 3)  # noqa: B023 - called at once
        if dense is not None:
            result["mlp_up_bf16_ms"][batch] = round(timed(lambda: x @ dense.T), 3)  # noqa: B023
        print(json.dumps({key: value.get(batch) for key, value in result.items() if isinstance(value, dict)}), flush=True)
    fold_quantized_inputs(model)
    for batch in BATCHES:
        result["step_ms_folded"][batch] = round(step_ms(model, batch), 2)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
