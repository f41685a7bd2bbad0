"""The engines under a failing step, in-process with the demo model: who fails, who goes on."""

from __future__ import annotations

import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker import _failpoints
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._failures import MAX_CONSECUTIVE_FAILURES
from mlxtrio.worker._sequential import SequentialEngine

from .engines import demo_engine, generate, run

@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Arm a failpoint in this process, as MLXTRIO_FAILPOINTS would in a worker."""

    def arm(setting: str) -> None:
        monkeypatch.setattr(_failpoints, "_armed", _failpoints.parse(setting))
        monkeypatch.setattr(_failpoints, "_hits", _failpoints.Counter())

    return arm


def test_failpoint_settings_are_checked():
    assert _failpoints.parse("step=oom@3; load=crash") == {"step": ("oom", 3), "load": ("crash", None)}
    for bad in ("step=corrupt", "send=oom", "nowhere=error", "step=explode"):
        with pytest.raises(ValueError, match="MLXTRIO_FAILPOINTS"):
            _failpoints.parse(bad)


def test_batch_failure_fails_started_sequences_and_restarts_waiting_ones(demo, armed):
    model, tokenizer = demo
    alone = demo_engine(BatchEngine, demo, prefill_step_size=4, prompt_cache_bytes=0)
    alone.admit(generate(2, "a much longer prompt that takes several prefill steps " * 3))
    expected, _ = run(alone, {2})

    engine = demo_engine(BatchEngine, demo, prefill_step_size=4, prompt_cache_bytes=0)
    engine.admit(generate(1, "hi"))
    while not any(delta.request_id == 1 and delta.text for delta in engine.step()[0]):
        pass
    engine.admit(generate(2, "a much longer prompt that takes several prefill steps " * 3))
    engine.step()  # request 2 is in prefill now, request 1 decoding
    armed("step=oom@1")
    deltas, failures = engine.step()
    # Request 1 had sent text: it fails, with the memory status. Request 2 had sent
    # nothing: it starts again in a fresh generator and ends as it would have alone.
    assert failures == [(1, failures[0][1])] and failures[0][1].kind is p.ErrorKind.OUT_OF_MEMORY
    assert "out of memory" in str(failures[0][1])
    texts, failed = run(engine, {2})
    assert failed == {} and texts == expected
    assert engine.active == 0 and not engine.broken


def test_a_prompt_that_fails_twice_fails(demo, armed):
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=0)
    armed("step=error")
    engine.admit(generate(1, "hi"))
    assert engine.step() == ([], [])  # failed before any output: tried again
    deltas, failures = engine.step()
    assert [(request_id, error.kind) for request_id, error in failures] == [(1, p.ErrorKind.INTERNAL)]
    assert "injected error" in str(failures[0][1]) and engine.active == 0


def test_repeated_failures_mark_the_engine_broken_and_one_good_step_resets(demo, armed):
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=0)
    armed("step=error")
    request_id = 0
    while not engine.broken:
        request_id += 1
        engine.admit(generate(request_id, "hi"))
        run(engine, {request_id})
        assert request_id <= MAX_CONSECUTIVE_FAILURES
    armed("")
    engine._consecutive_failures = MAX_CONSECUTIVE_FAILURES - 1  # noqa: SLF001 - one short of broken
    engine.admit(generate(99, "hi"))
    run(engine, {99})
    assert engine._consecutive_failures == 0 and not engine.broken  # noqa: SLF001


def test_sequential_failure_is_the_failing_sequence_s_alone(demo, armed):
    model, tokenizer = demo
    alone = demo_engine(SequentialEngine, demo, prompt_cache_bytes=0)
    alone.admit(generate(2, "second"))
    expected, _ = run(alone, {2})
    engine = demo_engine(SequentialEngine, demo, prompt_cache_bytes=0)
    engine.admit(generate(1, "first"))
    engine.admit(generate(2, "second"))
    armed("step=oom@3")  # round robin: 1, 2, then 1 again
    texts, failed = run(engine, {1, 2})
    assert failed == {1: p.ErrorKind.OUT_OF_MEMORY}
    assert texts[2] == expected[2]


def test_top_k_as_large_as_the_vocabulary_is_no_top_k(demo):
    """Found by the generated-input test: mlx-lm raised inside the step, failing the whole batch."""
    model, tokenizer = demo
    huge_k = p.SamplingParams(max_tokens=4, temperature=1.0, seed=7, top_k=tokenizer.vocab_size, ignore_eos=True)
    no_k = p.SamplingParams(max_tokens=4, temperature=1.0, seed=7, ignore_eos=True)
    for engine_type in (BatchEngine, SequentialEngine):
        texts = []
        for params in (huge_k, no_k):
            engine = demo_engine(engine_type, demo, prompt_cache_bytes=0)
            engine.admit(generate(1, "hi", params))
            done, failed = run(engine, {1})
            assert failed == {}
            texts.append(done[1])
        assert texts[0] == texts[1]
