"""Our prompt batches change costs and shapes, never outputs.

A whole batch moves to generation without a copy; bucketed prefill padding
changes shapes (greedy, batched, chunked, with prompt-cache hits); merged
KV caches have room for the next token.
"""

from __future__ import annotations

import mlx.core as mx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm.generate import PromptProcessingBatch, _merge_caches
from mlx_lm.models.cache import BatchKVCache, KVCache, RotatingKVCache, make_prompt_cache

from mlxtrio import _protocol as p
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._mlx_lm._generator import PromptBatch, bucket_length, merge_caches

from .engines import demo_engine

PROMPTS = ["hello there, tell me a story about the sea", "the " * 70, "x"]
GREEDY = p.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def _run(engine: BatchEngine, prompts: list[str], first_id: int) -> list[tuple[str, int]]:
    for index, prompt in enumerate(prompts):
        engine.admit(p.Generate(first_id + index, GREEDY, None, prompt))
    texts: dict[int, str] = {}
    cached: dict[int, int] = {}
    done: set[int] = set()
    while len(done) < len(prompts):
        deltas, failures = engine.step()
        assert not failures
        for delta in deltas:
            texts[delta.request_id] = texts.get(delta.request_id, "") + delta.text
            cached[delta.request_id] = delta.cached_tokens
            if delta.finish_reason is not None:
                done.add(delta.request_id)
    return [(texts[first_id + index], cached[first_id + index]) for index in range(len(prompts))]


def test_bucket_length():
    assert [bucket_length(n, 32) for n in (1, 32, 33, 64)] == [32, 32, 64, 64]


@pytest.mark.parametrize("prefill_step_size", [16, 512])
def test_bucketed_prefill_gives_the_same_output(demo, prefill_step_size):
    model, tokenizer = demo
    results = []
    for bucket in (0, 32):
        engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=1 << 26, prefill_step_size=prefill_step_size, prefill_bucket=bucket)
        first = _run(engine, PROMPTS, 0)
        # Longer prompts that share those prefixes start from the prompt cache.
        second = _run(engine, [prompt + " and more words" for prompt in PROMPTS], 10)
        results.append((first, second))
    assert results[0] == results[1]
    assert all(cached > 0 for _, cached in results[1][1])


def _prefilled(model, tokenizer, prompts: list[str]) -> PromptBatch:  # noqa: ANN001
    caches = []
    for prompt in prompts:
        cache = make_prompt_cache(model)
        model(mx.array([tokenizer.encode(prompt)]), cache=cache)
        caches.append(cache)
    count = len(prompts)
    return PromptBatch(model, list(range(count)), caches, samplers=[None] * count, logits_processors=[[]] * count, max_tokens=[4] * count)


def test_a_whole_batch_moves_without_a_copy(demo):
    model, tokenizer = demo
    batch = _prefilled(model, tokenizer, PROMPTS)
    layers = list(batch.prompt_cache)
    moved = batch.split([2, 0, 1])
    assert moved.uids == [0, 1, 2]
    assert all(a is b for a, b in zip(moved.prompt_cache, layers, strict=True))
    assert len(batch) == 0 and batch.prompt_cache == [] and batch.tokens == []
    # What is left takes in a new batch as mlx-lm's own would.
    batch.extend(_prefilled(model, tokenizer, PROMPTS[:1]))
    assert batch.uids == [0] and len(batch.prompt_cache) == len(layers)


def test_part_of_a_batch_splits_as_in_mlx_lm(demo):
    model, tokenizer = demo
    batch = _prefilled(model, tokenizer, PROMPTS)
    moved = batch.split([1])
    assert moved.uids == [1] and batch.uids == [0, 2]
    assert moved.prompt_cache[0] is not batch.prompt_cache[0]


def _ours_and_mlx_lms(demo, monkeypatch, name: str, mlx_lms: object, runs: list[list[str]]) -> list[list]:  # noqa: ANN001
    """The engine's outputs for ``runs`` of prompts, as it is and then with ``name`` (in the generator's
    module) replaced by mlx-lm's own (a class or a function)."""
    model, tokenizer = demo
    used: list[str] = []

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        used.append(name)
        return mlx_lms(*args, **kwargs)

    results = []
    for own in (False, True):
        if own:
            monkeypatch.setattr(f"mlxtrio.worker._mlx_lm._generator.{name}", mlx_lms if isinstance(mlx_lms, type) else counted)
        engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=1 << 26)
        results.append([_run(engine, prompts, 10 * index) for index, prompts in enumerate(runs)])
        prompt_batch = engine._generator._prompt_batch  # noqa: SLF001
        assert (type(prompt_batch) is mlx_lms or name in used) == own
    return results


def test_moving_whole_gives_the_same_output_as_mlx_lms_own_batch(demo, monkeypatch):
    # The same prompts again, from the prompt cache: a burst that moves whole.
    results = _ours_and_mlx_lms(demo, monkeypatch, "PromptBatch", PromptProcessingBatch, [PROMPTS, PROMPTS])
    assert results[0] == results[1]
    # The two longer prompts came from the cache ("x", one token, has nothing to cache).
    assert [cached > 0 for _, cached in results[0][1]] == [True, True, False]


def _kv_cache(length: int, seed: int) -> KVCache:
    """A KV cache of ``length`` tokens (none: as a fresh one), its buffer as mlx-lm grows it."""
    cache = KVCache()
    if length:
        keys, values = mx.random.normal((2, 1, 2, length, 4), key=mx.random.key(seed))
        cache.update_and_fetch(keys, values)
    return cache


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=5))
def test_merged_caches_hold_what_mlx_lms_hold_with_room_for_a_token(lengths):
    caches = [[_kv_cache(length, seed), _kv_cache(length, seed + 100)] for seed, length in enumerate(lengths)]
    ours, theirs = merge_caches(caches), _merge_caches(caches)
    assert len(ours) == len(theirs) == 2
    for mine, reference in zip(ours, theirs, strict=True):
        assert type(mine) is BatchKVCache
        assert mine._idx == reference._idx  # noqa: SLF001
        assert mine.offset.tolist() == reference.offset.tolist()
        assert mine.left_padding.tolist() == reference.left_padding.tolist()
        if reference.keys is None:
            assert mine.keys is None
            continue
        # Room for the next token: the first forward pass writes without growing the buffers.
        assert mine.keys.shape[2] > mine._idx and mine.values.shape[2] > mine._idx  # noqa: SLF001
        held = mine._idx  # noqa: SLF001
        for row, pad in enumerate(reference.left_padding.tolist()):
            assert mx.array_equal(mine.keys[row, :, pad:held], reference.keys[row, :, pad:held]).item()
            assert mx.array_equal(mine.values[row, :, pad:held], reference.values[row, :, pad:held]).item()
        # And the batch reads the same keys and values for the next token.
        step_keys, step_values = mx.random.normal((2, len(lengths), 2, 1, 4), key=mx.random.key(7))
        for a, b in zip(mine.update_and_fetch(step_keys, step_values), reference.update_and_fetch(step_keys, step_values)):
            for row, pad in enumerate(reference.left_padding.tolist()):
                assert mx.array_equal(a[row, :, pad:], b[row, :, pad:]).item()


def test_other_caches_are_merged_by_mlx_lm():
    rotating = []
    for seed in range(2):
        cache = RotatingKVCache(max_size=16)
        keys, values = mx.random.normal((2, 1, 2, 5 + seed, 4), key=mx.random.key(seed))
        cache.update_and_fetch(keys, values)
        rotating.append([cache, _kv_cache(3 + seed, seed)])
    merged = merge_caches(rotating)
    assert [type(layer) for layer in merged] == [type(layer) for layer in _merge_caches(rotating)]
    assert type(merged[1]) is BatchKVCache and merged[1].keys.shape[2] > merged[1]._idx  # noqa: SLF001


def test_a_cached_burst_starts_without_growing_its_cache(demo):
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=1 << 26)
    _run(engine, PROMPTS[:2], 0)
    for index, prompt in enumerate(PROMPTS[:2]):
        engine.admit(p.Generate(10 + index, GREEDY, None, prompt))
    engine.step()  # merges the cached prompts, then writes each one's last prompt token
    layer = engine._generator._generation_batch.prompt_cache[0]  # noqa: SLF001
    # mlx-lm's merge would have left the buffers full, and that write would have grown them by a block.
    assert layer.keys.shape[2] == BatchKVCache.step > layer._idx  # noqa: SLF001
    engine.cancel_all()


def test_merging_with_room_gives_the_same_output_as_mlx_lms_merge(demo, monkeypatch):
    # Cold, then from the prompt cache, then longer prompts extending the cached ones.
    runs = [PROMPTS, PROMPTS, [prompt + " again" for prompt in PROMPTS]]
    results = _ours_and_mlx_lms(demo, monkeypatch, "merge_caches", _merge_caches, runs)
    assert results[0] == results[1]
