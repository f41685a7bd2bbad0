"""Time to first token inside mlx-lm's BatchGenerator, no server: where it goes.

    python bench/batch_ttft_probe.py MODEL_DIR [--json OUT]

Both servers in bench/serve_bench.py decode with BatchGenerator, and both
showed a first token about 120 ms after the request on an H100 where
``stream_generate`` gives it in about 25 ms. This probe takes the servers out:
one long-lived generator (as a server keeps), the prompts of serve_bench,
every shape seen once before timing. It reports

- ``stream_generate``: time to the first token of each prompt;
- ``burst``: N prompts inserted at once, time to each one's first token, and
  the duration of every ``next()`` call until then;
- ``join``: one prompt inserted while 8 others are decoding, time to its
  first token (what a newcomer meets on a busy server);

each as mlx-lm runs it, and again with ``mx.clear_cache`` made a no-op (the
generator calls it after every prefill chunk; on CUDA that hands the cached
buffers back to the driver).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import BatchGenerator
from serve_bench import prompts


def first_tokens(generator: BatchGenerator, batch: list[list[int]], max_tokens: int) -> tuple[list[float], list[float]]:
    """Insert ``batch``; seconds to each sequence's first token, and each next() call's duration."""
    started = time.perf_counter()
    uids = generator.insert(batch, max_tokens=[max_tokens] * len(batch))
    first: dict[int, float] = {}
    calls: list[float] = []
    live = set(uids)
    while live:
        tick = time.perf_counter()
        _, generated = generator.next()
        calls.append(time.perf_counter() - tick)
        for response in generated:
            if response.uid in live:
                first.setdefault(response.uid, time.perf_counter() - started)
                if response.finish_reason is not None:
                    live.discard(response.uid)
    return [first[uid] for uid in uids], calls[: max(1, len(calls) - max_tokens + 1)]


def join(generator: BatchGenerator, busy: list[list[int]], newcomer: list[int]) -> float:
    """Seconds to the first token of ``newcomer`` inserted while ``busy`` decode."""
    uids = set(generator.insert(busy, max_tokens=[64] * len(busy)))
    for _ in range(4):  # the busy ones are past prefill, decoding
        generator.next()
    started = time.perf_counter()
    (uid,) = generator.insert([newcomer], max_tokens=[4])
    seconds = None
    live = uids | {uid}
    while live:
        _, generated = generator.next()
        for response in generated:
            if response.uid == uid and seconds is None:
                seconds = time.perf_counter() - started
            if response.finish_reason is not None:
                live.discard(response.uid)
    return seconds


def probe(model, tokenizer, encoded: list[list[int]]) -> dict:  # noqa: ANN001
    result: dict = {}
    for prompt in encoded[:8]:  # warm: every prompt length once
        for _ in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=2):
            pass
    ttfts = []
    for prompt in encoded[:8]:
        started = time.perf_counter()
        for _ in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=1):
            ttfts.append(time.perf_counter() - started)
    result["stream_generate_ttft_ms"] = [round(t * 1e3, 1) for t in ttfts]
    generator = BatchGenerator(model, max_tokens=1, completion_batch_size=32, prefill_batch_size=8, prefill_step_size=512)
    for n in (1, 8, 32):
        for round_ in ("warm", "timed"):
            batch = (encoded * 4)[:n]
            firsts, calls = first_tokens(generator, batch, 8)
            if round_ == "timed":
                result[f"burst_{n}"] = {
                    "ttft_ms_p50": round(statistics.median(firsts) * 1e3, 1),
                    "ttft_ms_max": round(max(firsts) * 1e3, 1),
                    "next_calls_ms": [round(c * 1e3, 1) for c in calls],
                }
    join(generator, encoded[:8], encoded[8])  # warm
    result["join_8_ms"] = [round(join(generator, encoded[:8], encoded[9 + i]) * 1e3, 1) for i in range(4)]
    generator.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = mlx_lm.load(str(args.model))
    encoded = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in prompts(16)]
    results = {"model": str(args.model), "device": str(mx.default_device()), "as_is": probe(model, tokenizer, encoded)}
    clear_cache = mx.clear_cache
    mx.clear_cache = lambda: None
    try:
        results["no_clear_cache"] = probe(model, tokenizer, encoded)
    finally:
        mx.clear_cache = clear_cache
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
