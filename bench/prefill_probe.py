"""Where time goes on a backend that compiles per shape: first sight of a shape versus again.

    python bench/prefill_probe.py MODEL_DIR [--lengths 48 49 50 64 ...] [--batches 1 2 3 8 32]

In-process mlx-lm, no server. For each prompt length it times one prefill
(the model over the prompt, then the first sampled token), and for each batch
size one decode step of that many sequences, the first time that shape is
seen and a second time. A large first-time cost that the second time lacks is
per-shape compilation, which a server pays for each new prompt length and
each new batch size until its caches hold them.
"""

from __future__ import annotations

import argparse
import json
import time

import mlx.core as mx
import mlx_lm
from mlx_lm.models.cache import make_prompt_cache


def prefill_seconds(model, length: int) -> float:  # noqa: ANN001
    tokens = mx.array([[7 + (index % 50) for index in range(length)]])
    cache = make_prompt_cache(model)
    started = time.perf_counter()
    logits = model(tokens, cache=cache)
    mx.eval(mx.argmax(logits[:, -1, :], axis=-1))
    return time.perf_counter() - started


def decode_seconds(model, batch: int, context: int = 64) -> float:  # noqa: ANN001
    cache = make_prompt_cache(model)
    model(mx.array([[7] * context] * batch), cache=cache)
    mx.eval([c.state for c in cache])
    started = time.perf_counter()
    logits = model(mx.array([[9]] * batch), cache=cache)
    mx.eval(mx.argmax(logits[:, -1, :], axis=-1))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--lengths", type=int, nargs="+", default=[40, 41, 42, 60, 61, 62, 128, 129, 512, 513])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 3, 4, 5, 8, 16, 31, 32])
    args = parser.parse_args()
    model, _ = mlx_lm.load(args.model)
    prefill_seconds(model, 16)  # load and first use
    rows = []
    for length in args.lengths:
        first = prefill_seconds(model, length)
        again = prefill_seconds(model, length)
        rows.append({"length": length, "first_ms": round(first * 1000, 1), "again_ms": round(again * 1000, 1)})
    decode = []
    for batch in args.batches:
        first = decode_seconds(model, batch)
        again = decode_seconds(model, batch)
        decode.append({"batch": batch, "first_ms": round(first * 1000, 1), "again_ms": round(again * 1000, 1)})
    print(json.dumps({"device": str(mx.default_device()), "rows": rows, "decode": decode}, indent=1))


if __name__ == "__main__":
    main()
