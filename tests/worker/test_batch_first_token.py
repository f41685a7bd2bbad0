"""The batch's first tokens go out in the step that ends their prompts (mlxtrio/worker/_batch.py, ``Generator.first_tokens``).

mlx-lm's ``BatchGenerator`` hands a sequence's first token out one step after
the step that samples it. When nothing else is decoding, the engine reads it
at once, so a burst of requests gets its first tokens a step sooner; the
generator's own copy of it, a step later, must then be skipped, never sent
twice. A newcomer to a running batch waits for the generator's pace, unless
the engine reads first tokens early always (the worker's choice on a CPU
backend pinned to one core).
"""

from __future__ import annotations

import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker._batch import BatchEngine

from .engines import admit_batched, demo_engine, generate, run

PROMPTS = ["the worker keeps", "a second prompt", "three of them", "and a fourth"]


def _batched(demo, **options) -> BatchEngine:  # noqa: ANN001, ANN003
    # A burst's requests are all in the batch from their start; a request alone, through admit_batched.
    return demo_engine(BatchEngine, demo, **{"prompt_cache_bytes": 0, **options})


def _steps_to_finish(engine: BatchEngine, request_ids: set[int]) -> tuple[dict[int, int], dict[int, list[tuple[int, p.Delta]]]]:
    """The step at which each request ended, and its deltas with the step of each."""
    ended: dict[int, int] = {}
    deltas: dict[int, list[tuple[int, p.Delta]]] = {}
    step = 0
    while len(ended) < len(request_ids):
        step += 1
        assert step < 100
        out, failures = engine.step()
        assert failures == []
        for delta in out:
            deltas.setdefault(delta.request_id, []).append((step, delta))
            if delta.finish_reason is not None:
                ended[delta.request_id] = step
    return ended, deltas


@pytest.mark.parametrize("max_tokens", [1, 2, 6])
def test_a_burst_gets_its_first_tokens_in_the_step_that_ends_its_prompts(demo, max_tokens: int):
    """mlx-lm's generator takes a fresh short prompt in over two steps (all but its last
    token, then the last), and one step when the prompt cache holds all but the last
    token. The step that takes the last one in gives the first token; the generator
    alone would give it a step later. From the second token on, each comes a step after
    the step that sampled it, as the generator pipelines them, so only a one-token
    request ends sooner.
    """
    params = p.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    engine = _batched(demo, prompt_cache_bytes=1 << 26)
    ids = iter(range(1, 100))
    for prompt_steps, cached in ((2, False), (1, True)):
        burst = {next(ids): prompt for prompt in PROMPTS}
        for request_id, prompt in burst.items():
            engine.admit(generate(request_id, prompt, params))
        ended, deltas = _steps_to_finish(engine, set(burst))
        for request_deltas in deltas.values():
            first_step, first = request_deltas[0]
            assert (first_step, first.completion_tokens) == (prompt_steps, 1)
            assert first.text or first.finish_reason
            last_step, last = request_deltas[-1]
            # Every token counted once: the generator's late copy of the first was not sent again.
            assert (last.completion_tokens, last.finish_reason) == (max_tokens, "length")
            assert last_step == prompt_steps + max_tokens - 1 + (max_tokens > 1)
            assert (last.cached_tokens > 0) is cached
        assert engine.active == 0


def test_output_is_the_same_as_decoded_alone(demo):
    """Reading the first token early changes when it goes out, not what: greedy, seeded and
    logprob-carrying requests in one batch give what each gives decoded alone."""
    cases = {
        1: p.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2),
        2: p.SamplingParams(max_tokens=16, temperature=1.0, seed=7, ignore_eos=True),
        3: p.SamplingParams(max_tokens=16, temperature=0.7, seed=3, top_k=20, repetition_penalty=1.2, ignore_eos=True),
    }

    def outputs(engine: BatchEngine, ids: list[int]) -> dict:
        for request_id in ids:
            engine.admit(generate(request_id, PROMPTS[request_id - 1], cases[request_id]))
        _, stepped = _steps_to_finish(engine, set(ids))
        deltas = {request_id: [delta for _, delta in ds] for request_id, ds in stepped.items()}
        return {
            request_id: ("".join(d.text for d in ds), [lp for d in ds for lp in d.logprobs], ds[-1].completion_tokens)
            for request_id, ds in deltas.items()
        }

    model, tokenizer = demo
    alone = {}
    for request_id in cases:
        alone.update(outputs(demo_engine(BatchEngine, demo, prompt_cache_bytes=0), [request_id]))
    together = outputs(_batched(demo), list(cases))
    assert together == alone
    assert all(completion == 16 for _, _, completion in together.values())
    assert len(together[1][1]) == 16  # a log probability for every token, the first one once


def test_a_first_token_that_ends_the_sequence_leaves_the_batch_at_once(demo):
    """A first token that is the end token ends its sequence in the step that sampled it (no text,
    nothing counted); the others go on, and its prompt's cache is kept for the next request."""
    model, tokenizer = demo
    eos = tokenizer.eos_token_id
    ending = p.SamplingParams(max_tokens=8, temperature=0.0, logit_bias=((eos, 100.0),))
    going_on = p.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    engine = _batched(demo, prompt_cache_bytes=1 << 26)
    engine.admit(generate(1, PROMPTS[0], ending))
    engine.admit(generate(2, PROMPTS[1], going_on))
    ended, deltas = _steps_to_finish(engine, {1, 2})
    # The first tokens in the second step (the prompts take two); the generator alone ends 1 at step 3.
    assert ended == {1: 2, 2: 10}
    assert [(d.text, d.finish_reason, d.completion_tokens) for _, d in deltas[1]] == [("", "stop", 0)]
    assert deltas[2][-1][1].completion_tokens == 8
    assert engine.active == 0
    # The ended sequence's prompt is in the prompt cache: the same prompt again starts from it.
    engine.admit(generate(3, PROMPTS[0], going_on))
    _, again = _steps_to_finish(engine, {3})
    assert again[3][-1][1].cached_tokens > 0


def test_sequences_ending_at_their_first_tokens_leave_in_one_removal(demo):
    """Three one-token requests of a burst end in the step of their first tokens, with one
    that goes on: the three leave the batch in one removal (each removal filters the whole
    batch's caches), every prompt's cache is kept, and the fourth decodes on alone."""
    one = p.SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    going_on = p.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    engine = _batched(demo, prompt_cache_bytes=1 << 26)
    removals: list[list[int]] = []
    remove = engine._generator.remove  # noqa: SLF001

    def counted(uids, **options):  # noqa: ANN001, ANN003, ANN202
        removals.append(list(uids))
        return remove(uids, **options)

    engine._generator.remove = counted  # noqa: SLF001
    for request_id, prompt in enumerate(PROMPTS[:3], start=1):
        engine.admit(generate(request_id, prompt, one))
    engine.admit(generate(4, PROMPTS[3], going_on))
    ended, deltas = _steps_to_finish(engine, {1, 2, 3, 4})
    assert ended[1] == ended[2] == ended[3] < ended[4]
    assert [len(uids) for uids in removals] == [3]
    assert all(deltas[request_id][-1][1].completion_tokens == 1 for request_id in (1, 2, 3))
    assert deltas[4][-1][1].completion_tokens == 6
    assert engine.active == 0
    # Each ended prompt's cache is in the prompt cache: the same prompt again starts from it.
    for request_id, prompt in enumerate(PROMPTS[:3], start=5):
        engine.admit(generate(request_id, prompt, one))
        _, again = _steps_to_finish(engine, {request_id})
        assert again[request_id][-1][1].cached_tokens > 0


def test_cancelling_right_after_the_first_token(demo):
    """Cancelled between the early first token and the generator's copy of it: nothing more is sent for it."""
    params = p.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    engine = _batched(demo)
    engine.admit(generate(1, PROMPTS[0], params))
    engine.admit(generate(2, PROMPTS[1], params))
    engine.step()
    assert engine.cancel(1)
    texts, failed = run(engine, {2})
    assert failed == {}
    assert set(texts) == {2}
    assert engine.active == 0


def test_a_newcomer_to_a_running_batch_does_not_hold_up_the_others(demo):
    """Reading a first token early waits for the step's computation before the next is built.
    While other sequences are decoding, that would delay every one of them (on a GPU a big
    model's step is bound by its computation), so a newcomer then gets its first token with
    the generator's next step, and the running sequence gets a token in every step."""
    params = p.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    engine = _batched(demo)
    admit_batched(engine, generate(1, PROMPTS[0], params))
    for _ in range(3):  # its prompt in, and its first token out
        engine.step()
    engine.admit(generate(2, PROMPTS[1], params))
    waited = []
    steps = 0
    first_of_2 = None
    while first_of_2 is None:
        steps += 1
        deltas, failures = engine.step()
        assert failures == []
        counts = {delta.request_id: delta.completion_tokens for delta in deltas}
        waited.append(1 in counts)
        if 2 in counts:
            first_of_2 = (steps, counts[2])
    # Two steps for the prompt, the first token in the step after: the generator's pace.
    assert first_of_2 == (3, 1)
    assert all(waited)
    # With nothing else decoding, the same prompt's first token comes in its second step.
    alone = _batched(demo)
    admit_batched(alone, generate(3, PROMPTS[1], params))
    _, deltas = _steps_to_finish(alone, {3})
    assert deltas[3][0][0] == 2


def test_always_early_a_newcomer_to_a_running_batch_gets_its_first_token_sooner(demo):
    """With ``first_tokens_always_early`` the newcomer's first token comes in the step that
    takes its prompt's last token, as when nothing else decodes; the running sequence still
    gets a token in every step, each sequence's output is what it is decoded alone, and no
    token is sent twice."""
    params = p.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    seeded = p.SamplingParams(max_tokens=12, temperature=0.8, seed=11, ignore_eos=True, logprobs=True, top_logprobs=2)
    engine = _batched(demo, first_tokens_always_early=True)
    admit_batched(engine, generate(1, PROMPTS[0], params))
    texts: dict[int, list[p.Delta]] = {1: [], 2: []}
    for _ in range(3):  # its prompt in, and its first tokens out
        for delta in engine.step()[0]:
            texts[delta.request_id].append(delta)
    engine.admit(generate(2, PROMPTS[1], seeded))
    _, stepped = _steps_to_finish(engine, {1, 2})
    first_step, first = stepped[2][0]
    assert (first_step, first.completion_tokens) == (2, 1)
    # The running one: a token in each of those steps too.
    assert [step for step, _ in stepped[1][:2]] == [1, 2]
    for request_id, deltas in stepped.items():
        texts[request_id].extend(delta for _, delta in deltas)
    model, tokenizer = demo
    for request_id, request_params in ((1, params), (2, seeded)):
        alone = demo_engine(BatchEngine, demo, prompt_cache_bytes=0)
        alone.admit(generate(request_id, PROMPTS[request_id - 1], request_params))
        _, solo = _steps_to_finish(alone, {request_id})
        deltas = texts[request_id]
        assert [d.completion_tokens for d in deltas] == sorted({d.completion_tokens for d in deltas})
        assert "".join(d.text for d in deltas) == "".join(d.text for _, d in solo[request_id])
        assert [lp for d in deltas for lp in d.logprobs] == [lp for _, d in solo[request_id] for lp in d.logprobs]
        assert deltas[-1].completion_tokens == 12
    assert engine.active == 0
