"""What admitting a request costs the worker, which admits requests one after another."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
import pytest

from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._engine import BatchEngine, SequentialEngine

from .test_engine_failures import _generate, _run


@pytest.fixture(scope="module")
def demo(cache_dir: Path):  # noqa: ANN201
    return mlx_lm.load(str(ensure_demo_model(cache_dir)))


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_admission_converts_no_vocabulary(demo, engine_type, monkeypatch: pytest.MonkeyPatch):
    """A detokenizer built anew per request converted all 151,936 ids of a Qwen
    vocabulary (100 ms each, serial in the worker: 4 s of time to first token
    at 32 streams on an H100). Each sequence now gets a reset copy."""
    model, tokenizer = demo
    engine = engine_type(model, tokenizer, context_length=4096, prompt_cache_bytes=0)
    converted: list[int] = []
    original = tokenizer._tokenizer.convert_ids_to_tokens  # noqa: SLF001

    def counting(ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        converted.append(len(ids) if isinstance(ids, list | range) else 1)
        return original(ids, *args, **kwargs)

    monkeypatch.setattr(tokenizer._tokenizer, "convert_ids_to_tokens", counting)  # noqa: SLF001
    alone = {}
    for request_id, prompt in enumerate(["the cache", "a worker"], start=1):
        solo = engine_type(model, tokenizer, context_length=4096, prompt_cache_bytes=0)
        solo.admit(_generate(request_id, prompt))
        alone.update(_run(solo, {request_id})[0])
    converted.clear()
    engine.admit(_generate(1, "the cache"))
    engine.admit(_generate(2, "a worker"))
    assert max(converted, default=0) < tokenizer.vocab_size
    # Each sequence's detokenizer is its own: together they give what they give alone.
    together, failed = _run(engine, {1, 2})
    assert failed == {}
    assert together == alone
    assert all(len(text) > 0 for text in together.values())

