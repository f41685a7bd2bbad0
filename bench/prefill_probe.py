"""Where time to first token goes: prefill latency by prompt length, first sight of a length versus again.

    python bench/prefill_probe.py MODEL_DIR [--lengths 48 49 50 64 ...]

In-process mlx-lm, no server. For each prompt length it times one prefill
(the model over the prompt, then the first sampled token) the first time that
length is seen and a second time. A large first-time cost that the second
time lacks is per-shape compilation, which every server pays for each new
prompt length until its caches hold them.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--lengths", type=int, nargs="+", default=[40, 41, 42, 60, 61, 62, 128, 129, 512, 513])
    args = parser.parse_args()
    model, _ = mlx_lm.load(args.model)
    prefill_seconds(model, 16)  # load and first use
    rows = []
    for length in args.lengths:
        first = prefill_seconds(model, length)
        again = prefill_seconds(model, length)
        rows.append({"length": length, "first_ms": round(first * 1000, 1), "again_ms": round(again * 1000, 1)})
    print(json.dumps({"device": str(mx.default_device()), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
