"""Counting a prompt's tokens (``Generate.count_only``): the tokenization generating would use, and nothing else."""

from __future__ import annotations

import json

import msgspec
import pytest

from mlxtrio import _protocol as p
from mlxtrio._protocol import ErrorKind
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._failures import RequestError
from mlxtrio.worker._prompt import count_bound
from mlxtrio.worker._sequential import SequentialEngine

from .engines import CONTEXT_LENGTH, GREEDY, demo_engine, run

_TOOLS = json.dumps([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])


def _chat(request_id: int, text: str, params: p.SamplingParams = GREEDY, **options: object) -> p.Generate:
    messages = (p.ChatMessage("system", "be brief"), p.ChatMessage("user", text))
    return p.Generate(request_id, params, messages, None, tools=_TOOLS, **options)


def _only_deltas(engine) -> list[p.Delta]:  # noqa: ANN001
    deltas, failures = engine.step()
    assert failures == []
    return deltas


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_a_count_is_the_prompt_tokens_generating_reports(demo, engine_type):
    engine = demo_engine(engine_type, demo)
    engine.admit(_chat(1, "the cache"))
    generated = []
    for _ in range(100):
        generated.extend(_only_deltas(engine))
        if generated and generated[-1].finish_reason is not None:
            break
    engine.settle()
    engine.admit(_chat(2, "the cache", count_only=True))
    (counted,) = _only_deltas(engine)
    assert (counted.request_id, counted.text, counted.completion_tokens, counted.finish_reason) == (2, "", 0, "counted")
    assert counted.prompt_tokens == generated[-1].prompt_tokens and counted.cached_tokens == 0
    assert not engine.active


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_a_count_runs_no_model_keeps_no_cache_and_may_exceed_the_context(demo, engine_type, monkeypatch: pytest.MonkeyPatch):
    model, tokenizer = demo
    engine = demo_engine(engine_type, demo)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a count ran the model")

    monkeypatch.setattr(type(model), "__call__", never)
    text = "ab " * 6_000
    # Generating, it would not fit (tests/worker/test_engine_admission.py); counted, it is just counted.
    engine.admit(p.Generate(1, GREEDY, None, text, count_only=True, choices=2))
    engine.admit(_chat(3, text, count_only=True))
    assert engine.active
    deltas = _only_deltas(engine)
    engine.settle()
    expected = len(tokenizer.encode(text, add_special_tokens=False))
    assert expected > CONTEXT_LENGTH
    assert [(d.request_id, d.prompt_tokens, d.finish_reason) for d in deltas[:2]] == [(1, expected, "counted"), (2, expected, "counted")]
    assert deltas[2].request_id == 3 and deltas[2].prompt_tokens > expected and deltas[2].finish_reason == "counted"
    assert not engine.active and engine.prompt_cache_bytes == 0
    monkeypatch.undo()
    # What it counted, a request that generates is refused for (the context is the only thing a count skips).
    engine.admit(p.Generate(4, GREEDY, None, "the cache"))
    texts, failed = run(engine, {4})
    assert failed == {} and texts[4]


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_a_count_far_over_the_context_is_refused_untokenized(demo, engine_type, monkeypatch: pytest.MonkeyPatch):
    """A count is not held to the context, but tokenizing megabytes would take the worker's one thread for seconds."""
    engine = demo_engine(engine_type, demo)
    limit = count_bound(CONTEXT_LENGTH)
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a prompt far over the bound was tokenized")

    # The demo's longest token is 13 characters: this many cannot be fewer tokens than the bound.
    far_over = "many words of a prompt far too long " * (limit * 13 // 36 + 1000)
    monkeypatch.setattr(engine._prompt_tokens._encoder, "_fast", never)
    for request in (p.Generate(1, GREEDY, None, far_over, count_only=True), _chat(2, far_over, count_only=True)):
        with pytest.raises(RequestError) as refused:
            engine.admit(request)
        error = refused.value
        assert error.kind == ErrorKind.INVALID_REQUEST and error.code == "context_length_exceeded", error
        assert f"at most {limit} tokens" in str(error) and f"context length of {CONTEXT_LENGTH} tokens" in str(error), error
    monkeypatch.undo()
    # Just over the bound, tokenized and refused too; at the bound or under, counted.
    over = "ab " * (limit // 2 + 100)
    with pytest.raises(RequestError, match=f"at most {limit} tokens"):
        engine.admit(p.Generate(3, GREEDY, None, over, count_only=True))
    assert not engine.active


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_a_count_fails_as_generating_would(demo, engine_type):
    engine = demo_engine(engine_type, demo)
    with pytest.raises(RequestError, match="the prompt is empty"):
        engine.admit(p.Generate(1, GREEDY, None, "", count_only=True))
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.admit(p.Generate(1, GREEDY, None, None, prompts=((1, 1 << 20),), count_only=True))
    assert not engine.active


def test_the_worker_loop_admits_a_count_then_sends_its_count_and_compiles_no_grammar(demo):
    from .test_batch_forming import Orchestrator

    end = Orchestrator(demo, follower_wait=0.0)
    try:
        # A schema that would not compile: a count does not get as far as compiling it.
        broken = msgspec.structs.replace(GREEDY, grammar=p.Grammar("json_schema", '{"type": "no such type"}'))
        end.end.writer.send(p.TO_WORKER.encode(_chat(1, "the cache", count_only=True, params=broken)))
        received: list[object] = []
        while not any((isinstance(message, p.Step) and message.deltas) or isinstance(message, p.RequestFailed) for message in received):
            frame = end.end.reader.receive(timeout=30)
            assert frame is not None, "no frame from the worker"
            received.append(p.TO_ORCHESTRATOR.decode(frame))
        assert [type(message) for message in received] == [p.Admitted, p.Step]
        (counted,) = received[1].deltas
        assert (counted.request_id, counted.finish_reason, counted.completion_tokens) == (1, "counted", 0)
        assert counted.prompt_tokens > 0
    finally:
        end.close()
