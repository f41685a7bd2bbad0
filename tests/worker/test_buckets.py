"""Bucketed prefill padding changes shapes, never outputs (greedy, batched, chunked, with prompt-cache hits)."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker._buckets import bucket_length
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
