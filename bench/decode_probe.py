"""Single-stream decode in-process, no server: mlx-lm against mlxtrio's engine.

    python bench/decode_probe.py --model demo [--models-dir DIR] [--tokens 128] [--repeats 5] [--json OUT]

Through HTTP, the server figures of bench/serve_bench.py mix the engine's
own speed with everything around it (the process boundary, the rings, the
orchestrator, the client). This probe takes all of that away: in one
process, on one prompt of serve_bench's, it decodes ``--tokens`` greedy
tokens one way after another, round-robin, ``--repeats`` times, and reports
each way's decode rate (tokens after the first, per second of the span after
the first), median and every sample:

- ``stream_generate``: mlx-lm's ``stream_generate``, the ceiling;
- ``batch_generator``: mlx-lm's ``BatchGenerator`` with one sequence;
- ``engine_alone``: mlxtrio's ``BatchEngine`` with one request, which it
  decodes alone (worker/_solo.py), driven as the worker drives it, on the
  model with its quantized inputs folded, as the worker loads it on a GPU
  (worker/_quantized.py; on the CPU backend the worker also computes
  quantized products in float32, which this probe leaves out);
- ``engine_batched``: the same engine with the lone-request path off;
- ``stream_generate_folded`` / ``engine_alone_unfolded``: the first and the
  third with the fold the other way round, so that its cost to one stream
  shows (it changes nothing for a model without quantized layers);
- ``bare_default_stream`` / ``bare_own_stream``: the smallest pipelined loop
  (model, argmax, ``async_eval``, ``item``) on MLX's default stream and on a
  stream of its own (mlx-lm's generation functions use one of their own);
- ``compiled_static_cache``: the same loop with its step under ``mx.compile``,
  over a KV cache of fixed capacity (the next multiple of 256 above prompt
  and tokens) whose offset is an array, so that the step's shapes never
  change and it is traced once. Attention then runs over the whole capacity,
  a mask hiding the empty part. Not what mlxtrio does: a probe of whether
  it should. The result also gives the seconds that 512 tokens take at a
  capacity no timed run used (its trace included), and the first token
  where its greedy output differs from ``stream_generate``'s, if one does.

``--ways NAME...`` runs only those.

It also times one decode step split in two, synchronously: building the
step's graph in Python (``model(...)`` returns before anything runs) and
evaluating it. Where building takes about as long as a pipelined step, the
decode is bound by the CPU thread, not by the accelerator.
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
from mlx_lm.models.cache import make_prompt_cache
from bench_models import add_model_options, build_chosen
from serve_bench import prompts, timed_stream_generate

from mlxtrio import _protocol as p
from mlxtrio.worker._engine import BatchEngine
from mlxtrio.worker._quantized import fold_quantized_inputs


def rate(first: float, last: float, tokens: int) -> float:
    return (tokens - 1) / (last - first)


def with_stream_generate(model, tokenizer, prompt: list[int], tokens: int) -> float:  # noqa: ANN001
    return timed_stream_generate(model, tokenizer, prompt, tokens)[1]


def with_batch_generator(model, tokenizer, prompt: list[int], tokens: int) -> float:  # noqa: ANN001, ARG001
    generator = BatchGenerator(model, max_tokens=tokens, completion_batch_size=32)
    generator.insert([prompt], max_tokens=[tokens])
    first = None
    count = 0
    done = False
    while not done:
        for response in generator.next_generated():
            count += 1
            if first is None:
                first = time.perf_counter()
            done = response.finish_reason is not None
    last = time.perf_counter()
    generator.close()
    return rate(first, last, count)


def with_engine(model, tokenizer, prompt: list[int], tokens: int, *, solo: bool) -> float:  # noqa: ANN001
    engine = BatchEngine(model, tokenizer, context_length=32768, prompt_cache_bytes=0, solo=solo)
    text = tokenizer.decode(prompt)
    params = p.SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    engine.admit(p.Generate(1, params, None, text))
    first = None
    count = 0
    while engine.active:
        deltas, failures = engine.step()
        assert not failures, failures
        for delta in deltas:
            if first is None and delta.completion_tokens:
                first = time.perf_counter()
            count = delta.completion_tokens
    return rate(first, time.perf_counter(), count)


def bare(model, tokenizer, prompt: list[int], tokens: int, *, stream: mx.Stream | None) -> float:  # noqa: ANN001, ARG001
    cache = make_prompt_cache(model)

    def forward(y: mx.array) -> mx.array:
        token = mx.argmax(model(y[None], cache=cache)[:, -1, :], axis=-1)
        mx.async_eval(token)
        return token

    with mx.stream(stream or mx.default_stream(mx.default_device())):
        pending = forward(mx.array(prompt))
        first = None
        for count in range(1, tokens + 1):
            following = forward(pending) if count < tokens else None
            pending.item()
            if first is None:
                first = time.perf_counter()
            pending = following
    return rate(first, time.perf_counter(), tokens)


class StaticCache:
    """A layer's KV cache of fixed capacity, its offset an array: the step's shapes never change."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array) -> None:
        self.keys, self.values, self.offset = keys, values, offset

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys = mx.slice_update(self.keys, keys, self.offset, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.offset, axes=(2,))
        return self.keys, self.values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> mx.array:  # noqa: ARG002
        # One query (a decode step): every position up to and including its own.
        return (mx.arange(self.keys.shape[2]) <= self.offset)[None]


def compiled_tokens(model, prompt: list[int], tokens: int) -> tuple[list[int], float]:  # noqa: ANN001
    """Greedy tokens from the compiled step over a static cache, and the decode rate."""
    cache = make_prompt_cache(model)
    token = mx.argmax(model(mx.array(prompt)[None], cache=cache)[:, -1, :], axis=-1)
    capacity = -(-(len(prompt) + tokens) // 256) * 256
    keys, values = [], []
    for layer in cache:
        batch, heads, _, key_dim = layer.keys.shape
        key_buffer = mx.zeros((batch, heads, capacity, key_dim), layer.keys.dtype)
        value_buffer = mx.zeros((batch, heads, capacity, layer.values.shape[3]), layer.values.dtype)
        key_buffer[..., : layer.offset, :] = layer.keys[..., : layer.offset, :]
        value_buffer[..., : layer.offset, :] = layer.values[..., : layer.offset, :]
        keys.append(key_buffer)
        values.append(value_buffer)
    offset = mx.array(len(prompt), mx.int32)
    mx.eval(token, keys, values)

    def step(token: mx.array, keys: list, values: list, offset: mx.array):  # noqa: ANN202
        layers = [StaticCache(k, v, offset) for k, v in zip(keys, values)]
        logits = model(token[:, None], cache=layers)[:, -1, :]
        return mx.argmax(logits, axis=-1), [layer.keys for layer in layers], [layer.values for layer in layers], offset + 1

    compiled = mx.compile(step, inputs=model.state)
    out = [token.item()]
    first = time.perf_counter()
    following = compiled(token, keys, values, offset)
    mx.async_eval(following)
    for count in range(1, tokens):
        token, keys, values, offset = following
        if count < tokens - 1:
            following = compiled(token, keys, values, offset)
            mx.async_eval(following)
        out.append(token.item())
    return out, rate(first, time.perf_counter(), tokens)


def with_compiled(model, tokenizer, prompt: list[int], tokens: int) -> float:  # noqa: ANN001, ARG001
    return compiled_tokens(model, prompt, tokens)[1]


def compiled_check(model, tokenizer, prompt: list[int]) -> dict:  # noqa: ANN001
    """512 tokens at a fresh capacity, trace included, and where the greedy output leaves stream_generate's."""
    started = time.perf_counter()
    compiled, _ = compiled_tokens(model, prompt, 2 * 256)  # a capacity no timed run uses
    first_call = time.perf_counter() - started
    reference = [response.token for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=len(compiled))]
    differ = next((index for index, (a, b) in enumerate(zip(reference, compiled)) if a != b), None)
    return {"first_call_s_with_512_tokens": first_call, "first_difference_from_stream_generate": differ, "compared": len(compiled)}


def step_split(model, prompt: list[int], steps: int = 32) -> dict:  # noqa: ANN001
    """Median ms to build one decode step's graph, and to evaluate it, synchronously."""
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)
    token = mx.argmax(logits[:, -1, :], axis=-1)
    mx.eval(token)
    build, run = [], []
    for _ in range(steps):
        started = time.perf_counter()
        logits = model(token[None], cache=cache)
        token = mx.argmax(logits[:, -1, :], axis=-1)
        built = time.perf_counter()
        mx.eval(token)
        build.append(built - started)
        run.append(time.perf_counter() - built)
    return {"build_ms": statistics.median(build) * 1e3, "eval_ms": statistics.median(run) * 1e3}


def unfold(model) -> None:  # noqa: ANN001
    """Undo ``fold_quantized_inputs``: each folding class back to the mlx.nn class it extends."""
    for module in model.modules():
        if type(module).__module__ == "mlxtrio.worker._quantized":
            module.__class__ = type(module).__bases__[0]


def folded(way, *, fold: bool):  # noqa: ANN001, ANN201
    """``way`` run on the model folded (as the worker loads it) or not, and left unfolded after."""

    def run(model, *args):  # noqa: ANN001, ANN002, ANN202
        if fold:
            fold_quantized_inputs(model)
        try:
            return way(model, *args)
        finally:
            unfold(model)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ways", nargs="+", help="only these ways (default: all)")
    args = parser.parse_args()
    model_path = build_chosen(args)
    model, tokenizer = mlx_lm.load(str(model_path))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompts(1)[0]}], add_generation_prompt=True)
    own = mx.new_stream(mx.default_device())
    ways = {
        "stream_generate": with_stream_generate,
        "batch_generator": with_batch_generator,
        "engine_alone": folded(lambda *a: with_engine(*a, solo=True), fold=True),
        "engine_batched": folded(lambda *a: with_engine(*a, solo=False), fold=True),
        "stream_generate_folded": folded(with_stream_generate, fold=True),
        "engine_alone_unfolded": lambda *a: with_engine(*a, solo=True),
        "bare_default_stream": lambda *a: bare(*a, stream=None),
        "bare_own_stream": lambda *a: bare(*a, stream=own),
        "compiled_static_cache": with_compiled,
    }
    if args.ways:
        ways = {name: ways[name] for name in args.ways}
    for way in ways.values():  # every shape compiled once before timing
        way(model, tokenizer, prompt, 16)
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            samples[name].append(way(model, tokenizer, prompt, args.tokens))
    result = {
        "model": args.model,
        "device": str(mx.default_device()),
        "tokens": args.tokens,
        "prompt_tokens": len(prompt),
        "tok_per_s_median": {name: statistics.median(values) for name, values in samples.items()},
        "tok_per_s_samples": samples,
        "one_step": step_split(model, prompt),
    }
    if "compiled_static_cache" in ways:
        result["compiled_static_cache"] = compiled_check(model, tokenizer, prompt)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
