"""What admitting a request costs the worker, which admits requests one after another."""

from __future__ import annotations

import time

import msgspec
import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._failures import RequestError
from mlxtrio.worker._sequential import SequentialEngine

from .engines import GREEDY, demo_engine, generate, run


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_admission_converts_no_vocabulary(demo, engine_type, monkeypatch: pytest.MonkeyPatch):
    """A detokenizer built anew per request converted all 151,936 ids of a Qwen
    vocabulary (100 ms each, serial in the worker: 4 s of time to first token
    at 32 streams on an H100). Each sequence now gets a reset copy."""
    model, tokenizer = demo
    engine = demo_engine(engine_type, demo, prompt_cache_bytes=0)
    converted: list[int] = []
    original = tokenizer._tokenizer.convert_ids_to_tokens  # noqa: SLF001

    def counting(ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        converted.append(len(ids) if isinstance(ids, list | range) else 1)
        return original(ids, *args, **kwargs)

    monkeypatch.setattr(tokenizer._tokenizer, "convert_ids_to_tokens", counting)  # noqa: SLF001
    alone = {}
    for request_id, prompt in enumerate(["the cache", "a worker"], start=1):
        solo = demo_engine(engine_type, demo, prompt_cache_bytes=0)
        solo.admit(generate(request_id, prompt))
        alone.update(run(solo, {request_id})[0])
    converted.clear()
    engine.admit(generate(1, "the cache"))
    engine.admit(generate(2, "a worker"))
    assert max(converted, default=0) < tokenizer.vocab_size
    # Each sequence's detokenizer is its own: together they give what they give alone.
    together, failed = run(engine, {1, 2})
    assert failed == {}
    assert together == alone
    assert all(len(text) > 0 for text in together.values())



def _backend_calls(engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:  # noqa: ANN001
    """The characters of each text the engine's tokenizer backend encodes (the direct path) from now on."""
    encoder = engine._prompt_tokens._encoder  # noqa: SLF001
    assert encoder._usable()  # noqa: SLF001
    encode = encoder._fast  # noqa: SLF001
    calls: list[int] = []

    def counting(texts: list[str], **options: object):  # noqa: ANN202
        calls.append(sum(map(len, texts)))
        return encode(texts, **options)

    monkeypatch.setattr(encoder, "_fast", counting)
    return calls


def _requests(text: str, params: p.SamplingParams = GREEDY, *, choices: int = 1) -> list[p.Generate]:
    """A completion and a chat request carrying ``text``."""
    return [
        p.Generate(1, params, None, text, choices=choices),
        p.Generate(1, params, (p.ChatMessage("user", text),), None, choices=choices),
    ]


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_a_prompt_that_cannot_fit_is_refused_untokenized(demo, engine_type, monkeypatch: pytest.MonkeyPatch):
    """A 14.8 MiB prompt with n=16 held the worker for 84 s, tokenized 16 times before the context check
    (issue 22). Its length alone shows it cannot fit: refused at once, nothing tokenized."""
    model, tokenizer = demo
    engine = demo_engine(engine_type, demo, prompt_cache_bytes=0)
    calls = _backend_calls(engine, monkeypatch)
    for request in _requests("many words of a prompt far too long " * 60_000, choices=16):
        started = time.perf_counter()
        with pytest.raises(RequestError) as refused:
            engine.admit(request)
        assert time.perf_counter() - started < 0.5
        assert (refused.value.kind, refused.value.code) == (p.ErrorKind.INVALID_REQUEST, "context_length_exceeded")
        assert refused.value.param == ("prompt" if request.prompt else "messages")
        # Refused by its length in characters, before it was tokenized: a bound, not a count.
        assert "tokens (at least " in str(refused.value)
    assert calls == [] and not engine.active


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_a_request_is_tokenized_once_whatever_its_n(demo, engine_type, monkeypatch: pytest.MonkeyPatch):
    model, tokenizer = demo
    engine = demo_engine(engine_type, demo, prompt_cache_bytes=0)
    calls = _backend_calls(engine, monkeypatch)
    # Short enough that only its tokens tell it does not fit: counted once, then refused.
    for request in _requests("ab " * 12_000, choices=16):
        with pytest.raises(RequestError, match=r"you requested \d+ tokens \(\d+ in the"):
            engine.admit(request)
    assert len(calls) == 2 and not engine.active
    # One that fits: its choices share the one tokenization, and sample as requests of their own
    # would, choice i with seed + i.
    params = p.SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    one_by_one = demo_engine(engine_type, demo, prompt_cache_bytes=0)
    for index in range(4):
        one_by_one.admit(p.Generate(1 + index, msgspec.structs.replace(params, seed=7 + index), None, "the cache"))
    expected, _ = run(one_by_one, {1, 2, 3, 4})
    calls.clear()
    engine.admit(p.Generate(1, params, None, "the cache", choices=4))
    assert len(calls) == 1
    texts, failed = run(engine, {1, 2, 3, 4})
    assert failed == {} and texts == expected
    assert len(set(texts.values())) > 1


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_a_choice_that_cannot_start_leaves_none_running(demo, engine_type):
    model, tokenizer = demo
    engine = demo_engine(engine_type, demo, prompt_cache_bytes=0)
    engine.admit(p.Generate(2, GREEDY, None, "already running"))
    # Its second choice would be sequence 2, which exists: the request fails, and its first choice with it.
    with pytest.raises(RequestError, match="duplicate request id 2"):
        engine.admit(p.Generate(1, GREEDY, None, "two choices", choices=2))
    texts, failed = run(engine, {2})
    assert set(texts) == {2} and failed == {}
    assert not engine.active
