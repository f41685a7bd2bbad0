"""The worker's prompt cache: its trie answers as mlx-lm's, and what it keeps holds no more memory than it counts."""

from __future__ import annotations

import gc
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm.models import cache as mlx_cache

from mlxtrio import _protocol as p
from mlxtrio.worker import _failpoints
from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._engine import BatchEngine
from mlxtrio.worker._prompt_cache import PromptCache, PromptTrie

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


@pytest.fixture(scope="module")
def demo(cache_dir: Path):  # noqa: ANN201
    return mlx_lm.load(str(ensure_demo_model(cache_dir)))


def test_remembered_caches_hold_no_more_than_they_count_once_settled(demo):
    """A sequence leaves the batch with lazy slices of the batch's KV cache;
    unsettled, they held the batch's whole buffers (here 6.7 MB for 1.1 MB counted)."""
    model, tokenizer = demo
    engine = BatchEngine(model, tokenizer, context_length=4096, prompt_cache_bytes=1 << 30)
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
    engine = BatchEngine(model, tokenizer, context_length=4096, prompt_cache_bytes=1 << 30)
    params = p.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    for round_ in range(2):
        for index in range(3):
            engine.admit(p.Generate(10 * round_ + index, params, None, f"prompt {index}: a few words"))
        while engine.active:
            engine.step()
            engine.settle()
        # The first settle failed: what it held is gone. The second kept its caches.
        assert (engine.prompt_cache_bytes == 0) == (round_ == 0)
