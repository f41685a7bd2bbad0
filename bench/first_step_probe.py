"""Where a burst's first step goes: the KV caches' merge, the forward pass, the wait.

    python bench/first_step_probe.py --model demo [--models-dir DIR] [--burst 8] [--repeats 30] [--json OUT]

bench/burst_probe.py gives the first step of a burst as one number (on the
CPU about twice a decode step; on the H100 10.5-12 ms against about 6). In
that step mlx-lm's ``BatchGenerator`` merges the requests' KV caches, one
per layer, into a batch cache (``BatchKVCache.merge``: a zero-filled array,
then one slice update per request, for the keys and for the values), and
the batch's first forward pass grows that cache (a merged cache is exactly
full, so the first token's write concatenates a block of zeros per layer).
Both are built of many small operations, which cost a launch each.

Two parts, on the prompt caches of serve_bench's prompts as the server holds
them (chat template, prefill, one ``KVCache`` per layer):

- **the merge alone**, ``--repeats`` times each way, by turns: its graph
  built (Python) and then computed, for mlx-lm's merge, mlxtrio's
  (``merge_caches``: the same with room for the next token; absent in a
  tree from before it), and two with fewer operations (``concat``: each
  request's keys padded, then one concatenation; ``roll``: the whole
  buffers concatenated at once, then each row rotated to its left padding
  by one gather, where all buffers have the same capacity, as they do for
  prompts within one 256-token block);
- **the engine's first step** of a burst that finds the engine idle and
  its prompts cached (burst_probe's "together, cached"), timed by wrappers
  around the engine's generator: the merge's graph, the merge computed (forced
  here, so it can be told apart), the batch's first forward pass built and
  launched, and the wait for its tokens; and, in a pass without the forced
  merge, the whole ``engine.step`` and the steady decode step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx
from bench_models import add_model_options, build_chosen, load_as_worker
from mlx_lm.models.cache import BatchKVCache, dynamic_roll, make_prompt_cache
from serve_bench import prompts

from mlxtrio import _protocol as p
from mlxtrio.worker._engine import BatchEngine

try:
    from mlxtrio.worker._prompt_batch import merge_caches
except ImportError:  # a tree from before it
    merge_caches = None

generate_module = importlib.import_module("mlx_lm.generate")  # the module, not the function mlx_lm exports


def merge_mlx_lm(caches: list) -> list:
    return [BatchKVCache.merge([cache[layer] for cache in caches]) for layer in range(len(caches[0]))]


def _batch(keys: mx.array, values: mx.array, padding: list[int], length: int) -> BatchKVCache:
    merged = BatchKVCache(padding)
    merged.keys, merged.values = keys, values
    merged.offset += length
    merged._idx = length  # noqa: SLF001
    return merged


def merge_concat(caches: list) -> list:
    lengths = [cache[0].offset for cache in caches]
    longest = max(lengths)
    padding = [longest - length for length in lengths]
    out = []
    for layer in range(len(caches[0])):
        rows = [cache[layer] for cache in caches]

        def padded(array: mx.array, pad: int, row) -> mx.array:  # noqa: ANN001
            sliced = array[..., : row.offset, :]
            return mx.pad(sliced, [(0, 0), (0, 0), (pad, 0), (0, 0)]) if pad else sliced

        keys = mx.concatenate([padded(row.keys, pad, row) for pad, row in zip(padding, rows)])
        values = mx.concatenate([padded(row.values, pad, row) for pad, row in zip(padding, rows)])
        out.append(_batch(keys, values, padding, longest))
    return out


def merge_roll(caches: list) -> list | None:
    lengths = [cache[0].offset for cache in caches]
    longest = max(lengths)
    padding = [longest - length for length in lengths]
    if len({cache[0].keys.shape[2] for cache in caches}) != 1:
        return None
    shifts = mx.array(padding)[:, None]
    out = []
    for layer in range(len(caches[0])):
        rows = [cache[layer] for cache in caches]
        keys = dynamic_roll(mx.concatenate([row.keys for row in rows]), shifts, axis=2)
        values = dynamic_roll(mx.concatenate([row.values for row in rows]), shifts, axis=2)
        out.append(_batch(keys, values, padding, longest))
    return out


def same_rows(reference: list, other: list) -> bool:
    """Both merges hold the same keys and values where they are not padding."""
    for a, b in zip(reference, other):
        mx.eval(a.left_padding)
        for row, pad in enumerate(a.left_padding.tolist()):
            for x, y in ((a.keys, b.keys), (a.values, b.values)):
                if not mx.array_equal(x[row, :, pad : a._idx], y[row, :, pad : b._idx]).item():  # noqa: SLF001
                    return False
    return True


def merge_alone(model, tokenizer, texts: list[str], repeats: int) -> dict:  # noqa: ANN001
    caches = []
    for text in texts:
        cache = make_prompt_cache(model)
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        model(mx.array([rendered[:-1]]), cache=cache)
        mx.eval([layer.state for layer in cache])
        caches.append(cache)
    ways = {"mlx-lm": merge_mlx_lm, "concat": merge_concat, "roll": merge_roll}
    if merge_caches is not None:
        ways["mlxtrio (room)"] = merge_caches
    reference = merge_mlx_lm(caches)
    mx.eval([layer.state for layer in reference])
    checked = {}
    for name, way in ways.items():
        merged = way(caches)
        checked[name] = merged is not None and same_rows(reference, merged)
    times: dict[str, dict[str, list[float]]] = {name: {"build": [], "compute": []} for name in ways if checked[name]}
    for _ in range(repeats):
        for name in times:
            started = time.perf_counter()
            merged = ways[name](caches)
            built = time.perf_counter()
            mx.eval([layer.state for layer in merged])
            times[name]["build"].append(built - started)
            times[name]["compute"].append(time.perf_counter() - built)
    return {
        "layers": len(caches[0]),
        "prompt_tokens": [cache[0].offset for cache in caches],
        "same_as_mlx_lm": checked,
        "ms_median": {
            name: {part: round(statistics.median(values) * 1e3, 3) for part, values in parts.items()}
            for name, parts in times.items()
        },
    }


def first_step(model, tokenizer, texts: list[str], repeats: int) -> dict:  # noqa: ANN001
    engine = BatchEngine(model, tokenizer, context_length=32768)
    params = p.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    requests = iter(range(1, 1 << 30))
    parts: dict[str, list[float]] = {}
    force = [False]

    def record(name: str, since: float) -> None:
        parts.setdefault(name, []).append(time.perf_counter() - since)

    # The engine's generator: mlx-lm's BatchGenerator, or a subclass of it making its own prompt batches.
    generator_class, batch_class = type(engine._generator), generate_module.GenerationBatch  # noqa: SLF001
    make_batch, init = generator_class._make_batch, batch_class.__init__  # noqa: SLF001

    def timed_make_batch(self, n):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        batch = make_batch(self, n)
        if force[0]:
            record("merge graph", started)
            started = time.perf_counter()
            mx.eval([layer.state for layer in batch.prompt_cache])
            record("merge computed", started)
        return batch

    def timed_init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        started = time.perf_counter()
        init(self, *args, **kwargs)
        if force[0] and len(self.uids) > 1:
            record("forward built and launched", started)
            started = time.perf_counter()
            mx.eval(self._next_tokens)  # noqa: SLF001
            record("forward computed (wait)", started)

    def burst() -> list[float]:
        for text in texts:
            engine.admit(p.Generate(next(requests), params, (p.ChatMessage("user", text),), None))
        steps = []
        while engine.active:
            started = time.perf_counter()
            engine.step()
            steps.append(time.perf_counter() - started)
            engine.settle()  # as the worker does after each step's frame
        return steps

    generator_class._make_batch, batch_class.__init__ = timed_make_batch, timed_init  # noqa: SLF001
    try:
        for _ in range(3):
            burst()  # warm-up, and the prompts into the prompt cache
        whole, steady = [], []
        for _ in range(repeats):
            force[0] = True
            burst()
            force[0] = False
            steps = burst()
            whole.append(steps[0])
            steady.append(statistics.median(steps[2:]))
    finally:
        generator_class._make_batch, batch_class.__init__ = make_batch, init  # noqa: SLF001
    result = {name: round(statistics.median(values) * 1e3, 3) for name, values in parts.items()}
    result["first engine.step, not forced"] = round(statistics.median(whole) * 1e3, 3)
    result["steady decode step"] = round(statistics.median(steady) * 1e3, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_as_worker(build_chosen(args))
    texts = prompts(args.burst)
    output = {
        "model": args.model,
        "burst": args.burst,
        "device": str(mx.default_device()),
        "merge_alone": merge_alone(model, tokenizer, texts, args.repeats),
        "first_step_ms_median": first_step(model, tokenizer, texts, args.repeats),
    }
    print(json.dumps(output, indent=1))
    if args.json:
        args.json.write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
