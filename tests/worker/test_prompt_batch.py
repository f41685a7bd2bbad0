"""Our prompt batches change costs and shapes, never outputs.

A whole batch moves to generation without a copy; bucketed prefill padding
changes shapes (greedy, batched, chunked, with prompt-cache hits).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.generate import PromptProcessingBatch
from mlx_lm.models.cache import make_prompt_cache

from mlxtrio import _protocol as p
from mlxtrio.worker._prompt_batch import PromptBatch, bucket_length
from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._engine import BatchEngine

PROMPTS = ["hello there, tell me a story about the sea", "the " * 70, "x"]
GREEDY = p.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def demo(cache_dir: Path):  # noqa: ANN201
    return mlx_lm.load(str(ensure_demo_model(cache_dir)))


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
        engine = BatchEngine(
            model, tokenizer, context_length=4096, prompt_cache_bytes=1 << 26, prefill_step_size=prefill_step_size, prefill_bucket=bucket
        )
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


def test_moving_whole_gives_the_same_output_as_mlx_lms_own_batch(demo, monkeypatch):
    model, tokenizer = demo
    results = []
    for own in (False, True):
        if own:
            # The engine's generator with mlx-lm's own prompt batch, as before.
            monkeypatch.setattr("mlxtrio.worker._engine.PromptBatch", PromptProcessingBatch)
        engine = BatchEngine(model, tokenizer, context_length=4096, prompt_cache_bytes=1 << 26, solo=False)
        assert type(engine._generator._prompt_batch) is (PromptProcessingBatch if own else PromptBatch)  # noqa: SLF001
        first = _run(engine, PROMPTS, 0)
        # The same prompts again, from the prompt cache: a burst that moves whole.
        second = _run(engine, PROMPTS, 10)
        results.append((first, second))
    assert results[0] == results[1]
    # The two longer prompts came from the cache ("x", one token, has nothing to cache).
    assert [cached > 0 for _, cached in results[0][1]] == [True, True, False]
