"""The worker's prompt cache: its trie answers as mlx-lm's, and what it keeps holds no more memory than it counts."""

from __future__ import annotations

import copy
import gc

import mlx.core as mx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm.models import cache as mlx_cache

from mlxtrio import _protocol as p
from mlxtrio.worker import _failpoints
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._mlx_lm._prompt_cache import PromptCache, PromptTrie, copy_cache

from .engines import demo_engine

# A small alphabet, so that sequences share prefixes and branch.
sequences = st.lists(st.integers(0, 3), max_size=12)


@settings(max_examples=400, deadline=None)
@given(
    stored=st.lists(sequences, max_size=12),
    removed=st.lists(st.integers(0, 11), max_size=4),
    queries=st.lists(sequences, min_size=1, max_size=8),
)
def test_search_finds_what_mlx_lms_finds(stored: list[list[int]], removed: list[int], queries: list[list[int]]):
    ours, theirs = PromptTrie(), mlx_cache.PromptTrie()
    for number, tokens in enumerate(stored):
        assert ours.add("m", tokens, number) == theirs.add("m", tokens, number)
    for index in removed:
        if index < len(stored):
            tokens = stored[index]
            try:
                value = theirs.pop("m", tokens)
            except KeyError:  # popped already, or never a value (an earlier pop took the node)
                continue
            assert ours.pop("m", tokens) == value
    for tokens in queries:
        assert ours.search("m", tokens) == theirs.search("m", tokens)
    assert ours.search("other", queries[0]) == theirs.search("other", queries[0])


def test_a_long_extension_is_found_with_its_tie_broken_as_mlx_lm_does():
    ours, theirs = PromptTrie(), mlx_cache.PromptTrie()
    prompt = list(range(100))
    # Two equally short extensions and a long one, below the prompt.
    for trie in (ours, theirs):
        trie.add("m", prompt + [7, 8], "a")
        trie.add("m", prompt + [9, 10], "b")
        trie.add("m", prompt + list(range(1000, 5000)), "c")
    found = ours.search("m", prompt)
    assert found == theirs.search("m", prompt)
    assert found.longer in (prompt + [7, 8], prompt + [9, 10])
    assert found.common_prefix == 100


def test_the_prompt_cache_uses_it_and_trims_a_longer_entry_to_the_prompt():
    cache = PromptCache(max_size=4)
    assert isinstance(cache._trie, PromptTrie)  # noqa: SLF001
    entry = mlx_cache.KVCache()
    entry.update_and_fetch(mx.zeros((1, 2, 40, 8)), mx.zeros((1, 2, 40, 8)))
    tokens = list(range(40))
    cache.insert_cache("m", tokens, [entry])
    found, rest = cache.fetch_nearest_cache("m", tokens[:10])
    # The entry holds 40 tokens; the prompt's first 9 come back cached, its last to be computed.
    assert found is not None and found[0].offset == 9
    assert rest == tokens[9:10]
    assert entry.offset == 40  # a copy was trimmed, not the entry


def test_remembered_caches_hold_no_more_than_they_count_once_settled(demo):
    """A sequence leaves the batch with lazy slices of the batch's KV cache;
    unsettled, they held the batch's whole buffers (here 6.7 MB for 1.1 MB counted)."""
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=1 << 30)
    gc.collect()
    before = mx.get_active_memory()
    # Lengths apart: most leave while others still decode (settled asynchronously), the last when all is idle.
    for index in range(8):
        params = p.SamplingParams(max_tokens=40 + 45 * index, temperature=0.0, ignore_eos=True)
        engine.admit(p.Generate(index + 1, params, None, f"prompt {index}: " + "words to remember " * (3 + index)))
    while engine.active:
        engine.step()
        engine.settle()
    mx.synchronize()
    gc.collect()
    held = mx.get_active_memory() - before
    counted = engine.prompt_cache_bytes
    assert counted > 0
    assert held <= counted * 1.02 + 64 * 1024, (held, counted)


def test_caches_that_cannot_be_computed_empty_the_prompt_cache_and_serving_goes_on(demo, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_failpoints, "_armed", _failpoints.parse("settle=oom@1"))
    monkeypatch.setattr(_failpoints, "_hits", _failpoints.Counter())
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=1 << 30)
    params = p.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    for round_ in range(2):
        for index in range(3):
            engine.admit(p.Generate(10 * round_ + index, params, None, f"prompt {index}: a few words"))
        while engine.active:
            engine.step()
            engine.settle()
        # The first settle failed: what it held is gone. The second kept its caches.
        assert (engine.prompt_cache_bytes == 0) == (round_ == 0)


def _kv(length: int, fill: float = 1.0) -> tuple[mx.array, mx.array]:
    return mx.full((1, 2, length, 8), fill), mx.full((1, 2, length, 8), -fill)


def _filled_caches() -> list:
    """One of each cache class mlx-lm's models make, each holding something."""
    plain, rotating, quantized, chunked = (
        mlx_cache.KVCache(), mlx_cache.RotatingKVCache(max_size=8, keep=2), mlx_cache.QuantizedKVCache(group_size=32, bits=8),
        mlx_cache.ChunkedKVCache(chunk_size=16),
    )
    for cache in (plain, rotating, chunked):
        cache.update_and_fetch(*_kv(5))
    quantized.update_and_fetch(mx.ones((1, 2, 5, 32)), mx.ones((1, 2, 5, 32)))
    arrays = mlx_cache.ArraysCache(2)
    arrays[0], arrays[1] = mx.ones((1, 4)), mx.zeros((1, 3))
    listed = mlx_cache.CacheList(mlx_cache.KVCache(), mlx_cache.ArraysCache(1))
    listed[0].update_and_fetch(*_kv(3))
    listed[1][0] = mx.ones((1, 2))
    return [plain, rotating, quantized, chunked, arrays, listed]


def _snapshot(value):  # noqa: ANN001, ANN202 - any cache, as plain Python values
    if isinstance(value, mx.array):
        return ("array", value.dtype, value.shape, value.tolist())
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_snapshot(item) for item in value])
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if hasattr(value, "__dict__"):
        return (type(value).__name__, {key: _snapshot(item) for key, item in vars(value).items()})
    return value


def test_copy_cache_gives_what_deepcopy_gives_and_the_copy_is_its_own():
    caches = _filled_caches()
    before = _snapshot(caches)
    copied = copy_cache(caches)
    assert _snapshot(copied) == _snapshot(copy.deepcopy(caches)) == before
    assert all(a is not b for a, b in zip(copied, caches))
    # The request works on its copy: trimmed, written into, extended. The cached entry stays as it was.
    plain, rotating, quantized, chunked, arrays, listed = copied
    plain.trim(2)
    plain.update_and_fetch(*_kv(4, fill=7.0))
    plain.keys[..., 0, :] = 9.0
    rotating.update_and_fetch(*_kv(6, fill=3.0))
    quantized.update_and_fetch(mx.full((1, 2, 1, 32), 2.0), mx.full((1, 2, 1, 32), 2.0))
    chunked.update_and_fetch(*_kv(2, fill=5.0))
    arrays[0] = mx.full((1, 4), 4.0)
    listed[0].keys[..., 1, :] = 8.0
    mx.eval(copied)
    assert _snapshot(caches) == before
    assert _snapshot(copied) != before


def test_copy_cache_keeps_what_is_shared_shared():
    cache = mlx_cache.KVCache()
    cache.update_and_fetch(*_kv(3))
    cache.values = cache.keys  # two names for one array, as a cache class might keep
    (copied,) = copy_cache([cache])
    assert copied.values is copied.keys
    assert copied.keys is not cache.keys


def test_copy_cache_leaves_classes_with_their_own_copying_to_deepcopy():
    copies: list[str] = []

    class OwnCopy(mlx_cache.KVCache):
        def __deepcopy__(self, memo):  # noqa: ANN001, ANN204
            copies.append("own")
            new = mlx_cache.KVCache()
            new.offset = self.offset
            return new

    OwnCopy.__module__ = "mlx_lm.models.someone_elses"
    cache = OwnCopy()
    cache.update_and_fetch(*_kv(3))
    (copied,) = copy_cache([cache])
    assert copies == ["own"]
    assert type(copied) is mlx_cache.KVCache


def test_the_prompt_cache_hands_out_copies():
    cache = PromptCache(max_size=4)
    layers = [mlx_cache.KVCache()]
    layers[0].update_and_fetch(*_kv(6))
    mx.eval(layers[0].state)
    cache.insert_cache("m", [1, 2, 3, 4, 5, 6], layers)
    before = _snapshot(layers)
    for prompt in ([1, 2, 3, 4, 5, 6], [1, 2, 3], [1, 2, 3, 4, 5, 6, 7, 8]):
        found, rest = cache.fetch_nearest_cache("m", prompt)
        assert found is not None and found[0] is not layers[0]
        found[0].trim(1)
        found[0].update_and_fetch(*_kv(2, fill=6.0))
        assert _snapshot(layers) == before
