"""A sequence decoded alone (mlxtrio/worker/_mlx_lm/_solo.py) and its move into the batch, in-process, demo model.

The property that matters: a request's output does not depend on whether, or
when, another request arrived. Each case runs a request three ways: in the
batch from its start (as a burst's first request), alone to its end, and
alone until a second request joins after a few tokens; the texts must be the
same.
"""

from __future__ import annotations

import re

import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker._batch import BatchEngine

from .engines import admit_batched, demo_engine, generate

PROMPT = "the worker keeps"
CASES = {
    "greedy": p.SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
    "seeded": p.SamplingParams(max_tokens=24, temperature=1.0, seed=11, ignore_eos=True),
    "filtered and penalised": p.SamplingParams(
        max_tokens=24, temperature=0.8, seed=5, top_p=0.9, top_k=40, repetition_penalty=1.3, presence_penalty=0.5,
        logit_bias=((7, 2.0),), ignore_eos=True,
    ),
    "grammar": p.SamplingParams(max_tokens=40, temperature=1.0, seed=3, grammar=p.Grammar("regex", r'\{"n": [0-9]{1,6}\}')),
    "logprobs": p.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2),
}


def _engine(demo, **options) -> BatchEngine:  # noqa: ANN001, ANN003
    return demo_engine(BatchEngine, demo, prompt_cache_bytes=0, **options)


def _collect(engine: BatchEngine, texts: dict, extras: dict | None = None, *, until: set[int], join: tuple[int, p.Generate] | None = None) -> None:
    steps = 0
    while until:
        if join is not None and steps == join[0]:
            engine.admit(join[1])
            until.add(join[1].request_id)
        deltas, failures = engine.step()
        assert failures == []
        steps += 1
        for delta in deltas:
            texts[delta.request_id] = texts.get(delta.request_id, "") + delta.text
            if extras is not None:
                extras.setdefault(delta.request_id, []).extend(delta.logprobs)
                if delta.finish_reason is not None:
                    extras[delta.request_id].append((delta.finish_reason, delta.completion_tokens))
            if delta.finish_reason is not None:
                until.discard(delta.request_id)
        assert steps < 500


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("join_after", [0, 1, 5])
def test_output_is_the_same_alone_joined_and_batched(demo, case: str, join_after: int):
    params = CASES[case]
    other = generate(2, "a second prompt", CASES["greedy"])
    runs = {}
    for name, admit, join in (
        ("batched", admit_batched, None),
        ("alone", BatchEngine.admit, None),
        ("joined", BatchEngine.admit, (join_after, other)),
    ):
        engine = _engine(demo)
        texts: dict = {}
        extras: dict = {}
        admit(engine, generate(1, PROMPT, params))
        assert engine.active == 1
        _collect(engine, texts, extras, until={1}, join=join)
        if join is not None:
            _collect(engine, texts, extras, until={2} - {r for r, e in extras.items() if e and isinstance(e[-1], tuple)})
        runs[name] = (texts[1], extras[1])
        assert engine.active == 0
    assert runs["alone"] == runs["batched"]
    assert runs["joined"] == runs["batched"]
    if params.grammar is not None:
        assert re.fullmatch(params.grammar.text, runs["joined"][0])


def test_the_request_that_joins_gets_what_it_gets_alone(demo):
    second = generate(2, "a second prompt", CASES["seeded"])
    alone: dict = {}
    engine = _engine(demo)
    engine.admit(second)
    _collect(engine, alone, until={2})
    joined: dict = {}
    engine = _engine(demo)
    engine.admit(generate(1, PROMPT, CASES["greedy"]))
    _collect(engine, joined, until={1, 2}, join=(3, second))
    assert joined[2] == alone[2]


@pytest.mark.parametrize("max_tokens", [1, 2, 3])
def test_joining_at_the_last_token_ends_the_sequence_there(demo, max_tokens: int):
    """The token the batch would take over may be the sequence's last: it ends instead of joining."""
    params = p.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    expected: dict = {}
    engine = _engine(demo)
    admit_batched(engine, generate(1, PROMPT, params))
    _collect(engine, expected, until={1})
    texts: dict = {}
    extras: dict = {}
    engine = _engine(demo)
    engine.admit(generate(1, PROMPT, params))
    _collect(engine, texts, extras, until={1}, join=(max_tokens - 1, generate(2, "x", CASES["greedy"])))
    assert texts[1] == expected[1]
    assert extras[1][-1] == ("length", max_tokens)


def test_stop_strings_hold_across_the_move(demo):
    free: dict = {}
    engine = _engine(demo)
    admit_batched(engine, generate(1, PROMPT, CASES["greedy"]))
    _collect(engine, free, until={1})
    stop = free[1][6:9]
    params = p.SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=(stop,))
    for join_after in range(0, 8):
        texts: dict = {}
        engine = _engine(demo)
        engine.admit(generate(1, PROMPT, params))
        _collect(engine, texts, until={1}, join=(join_after, generate(2, "x", CASES["greedy"])))
        assert texts[1] == free[1][: free[1].index(stop)]


def test_a_sequence_decoded_alone_feeds_the_prompt_cache(demo):
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=1 << 26)
    engine.admit(generate(1, PROMPT, CASES["greedy"]))
    first: dict = {}
    _collect(engine, first, until={1})
    assert engine.prompt_cache_bytes > 0
    engine.admit(generate(2, PROMPT, CASES["greedy"]))
    deltas, _ = engine.step()
    assert deltas[0].cached_tokens > 0
    again = {2: deltas[0].text}
    _collect(engine, again, until={2} if deltas[0].finish_reason is None else set())
    assert again[2] == first[1]


def test_cancelling_the_sequence_decoded_alone(demo):
    engine = _engine(demo)
    engine.admit(generate(1, PROMPT, CASES["greedy"]))
    engine.step()
    assert engine.cancel(1)
    assert engine.active == 0
    assert not engine.cancel(1)
    # The engine is free again: the next request is decoded alone, as the first was.
    texts: dict = {}
    engine.admit(generate(2, PROMPT, CASES["greedy"]))
    _collect(engine, texts, until={2})
    assert len(texts[2]) > 0


def test_a_duplicate_id_is_refused_while_alone(demo):
    engine = _engine(demo)
    engine.admit(generate(1, PROMPT, CASES["greedy"]))
    with pytest.raises(Exception, match="duplicate request id 1"):
        engine.admit(generate(1, PROMPT, CASES["greedy"]))


@pytest.mark.parametrize(("steps", "moving"), [(1, "take_unfed"), (2, "take_pending")])
def test_a_sequence_that_fails_to_move_fails_alone(demo, monkeypatch: pytest.MonkeyPatch, steps: int, moving: str):
    """If moving into the batch fails (the pending token's computation ran out of memory, say), that
    sequence fails with its error on the next step; the newcomer goes on. After one step the first
    token is out but not fed; after two, the next token is on its way."""
    from mlxtrio.worker._mlx_lm import SoloDecoder

    engine = _engine(demo)
    engine.admit(generate(1, PROMPT, CASES["greedy"]))
    for _ in range(steps):
        engine.step()

    def fail(self) -> None:  # noqa: ANN001
        raise RuntimeError("[malloc] Unable to allocate 1024 bytes")

    monkeypatch.setattr(SoloDecoder, moving, fail)
    engine.admit(generate(2, "x", CASES["greedy"]))
    assert engine.active == 2
    deltas, failures = engine.step()
    assert [(request_id, error.kind) for request_id, error in failures] == [(1, p.ErrorKind.OUT_OF_MEMORY)]
    texts: dict = {2: "".join(delta.text for delta in deltas if delta.request_id == 2)}
    _collect(engine, texts, until={2})
    assert len(texts[2]) > 0
    assert engine.active == 0


@pytest.mark.parametrize("join_after", [1, 2, 3, 6])
def test_a_long_prompt_is_prefilled_a_chunk_a_step_and_can_join_midway(demo, join_after: int):
    """A chunk per step, as in the batch: the worker answers pings, cancellations and newcomers
    between chunks. A sequence that joins before its prompt is all in brings what its cache holds."""
    long_prompt = " ".join(["the worker keeps the batch going"] * 6)
    params = CASES["seeded"]
    runs = {}
    for name, admit, join in (
        ("batched", admit_batched, None),
        ("joined", BatchEngine.admit, (join_after, generate(2, "x", CASES["greedy"]))),
    ):
        engine = _engine(demo, prefill_step_size=8)
        admit(engine, generate(1, long_prompt, params))
        texts: dict = {}
        first_text_at = None
        steps = 0
        while engine.active:
            if join is not None and steps == join[0]:
                engine.admit(join[1])
            deltas, failures = engine.step()
            assert failures == []
            steps += 1
            for delta in deltas:
                texts[delta.request_id] = texts.get(delta.request_id, "") + delta.text
                if delta.request_id == 1 and first_text_at is None:
                    first_text_at = steps
            assert steps < 500
        runs[name] = texts[1]
        if name == "joined" and join_after == 6:
            assert first_text_at > 2  # several prefill steps came before the first token
    assert runs["joined"] == runs["batched"]


def test_the_first_token_goes_out_before_the_next_step_is_launched(demo):
    """The client waits for the first token, so nothing is built or launched after it before it is
    read; from the second token on, the step after each is launched before it is read, as mlx-lm's
    generate_step does. The tokens are generate_step's either way."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    from mlxtrio.worker._mlx_lm import SoloDecoder

    model, tokenizer = demo
    prompt = tokenizer.encode(PROMPT)
    calls: list[int] = []

    def counting(tokens, cache):  # noqa: ANN001, ANN202
        calls.append(tokens.size)
        return model(tokens, cache=cache)

    def greedy(logprobs: mx.array) -> mx.array:
        return mx.argmax(logprobs, axis=-1)

    decoder = SoloDecoder(counting, make_prompt_cache(model), list(prompt), list(prompt), greedy, [], 512)
    assert decoder.prefill_step()
    assert calls == [len(prompt) - 1, 1]
    tokens = [decoder.next(last=False)[0]]
    assert len(calls) == 2, "the step after the first token was launched before it was read"
    tokens.append(decoder.next(last=False)[0])
    assert len(calls) == 4  # the first token fed, and the step after the second launched
    for _ in range(6):
        tokens.append(decoder.next(last=False)[0])
    assert len(calls) == 10
    expected = [int(token) for token, _ in generate_step(mx.array(prompt), model, max_tokens=8, sampler=greedy)]
    assert tokens == expected
