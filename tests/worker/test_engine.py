"""The engine contract: ``make_engine`` picks an engine from the worker's settings, and both have what the loop uses."""

from __future__ import annotations

import msgspec

from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._engine import Engine, make_engine
from mlxtrio.worker._sequential import SequentialEngine

from .engines import CONTEXT_LENGTH, WORKER, generate, run


def test_make_engine_batches_unless_told_one_at_a_time(demo):
    model, tokenizer = demo
    made = {
        decode_concurrency: make_engine(
            model,
            tokenizer,
            msgspec.structs.replace(WORKER, decode_concurrency=decode_concurrency),
            context_length=CONTEXT_LENGTH,
            first_tokens_always_early=False,
            progress=lambda: None,
        )
        for decode_concurrency in (WORKER.decode_concurrency, 1)
    }
    assert (type(made[WORKER.decode_concurrency]), made[WORKER.decode_concurrency].kind) == (BatchEngine, "batched")
    assert (type(made[1]), made[1].kind) == (SequentialEngine, "sequential")
    texts = []
    for engine in made.values():
        assert isinstance(engine, Engine)
        engine.admit(generate(1, "the engine"))
        done, failed = run(engine, {1})
        assert failed == {} and engine.active == 0 and not engine.broken
        engine.settle()
        texts.append(done[1])
    # The same greedy tokens, whichever engine decodes them.
    assert texts[0] == texts[1]
