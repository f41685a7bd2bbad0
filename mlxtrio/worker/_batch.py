"""Continuous batching: mlx-lm's ``BatchGenerator`` driven one step at a time.

New requests join between steps, prefill of newcomers is interleaved with
decoding of the rest, finished sequences leave. A request that finds the
engine idle is decoded alone on a plain KV cache, faster, and moves into
the batch when a second arrives (``_mlx_lm/_solo.py``); its output is the
same.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from .._protocol import Delta, ErrorKind, Generate, SamplingParams
from ._core import EngineCore, StepResult
from ._failpoints import failpoint
from ._failures import RequestError, RetryOnce, generation_failure
from ._mlx_lm import Generator, Processor, Sampler, SoloDecoder, StopSequences, make_prompt_cache
from ._output import SequenceOutput
from ._sampling import make_processors, make_sampler
from ._vision import Vision

if TYPE_CHECKING:
    from ._group import TokenShare

__all__ = ["BatchEngine"]


@attrs.define(eq=False)
class _Alone:
    """The one sequence decoded alone, outside the batch (see _mlx_lm/_solo.py)."""

    request: Generate
    sequence: SequenceOutput
    decoder: SoloDecoder
    # The prompt cache hit it started from (None: none), should it join before its prefill.
    prompt_cache: list[Any] | None


class BatchEngine(EngineCore):
    """Continuous batching through mlx-lm's BatchGenerator.

    First tokens: the generator samples a sequence's first token in the step
    that ends its prompt, but hands it out a step later, after launching the
    step that feeds it back. Reading it at once sends it a step sooner, and
    costs the overlap of this step's computation with the building of the
    next, which every sequence in the batch pays for. So by default it is
    read early only when no other sequence is decoding (a burst that finds
    the engine idle gets its first tokens a whole step earlier); a newcomer
    to a running batch gets its first token with the generator's next step,
    as in mlx-lm, since on a GPU a big model's step is bound by its
    computation and the overlap is worth keeping. The worker sets
    ``first_tokens_always_early`` where there is no overlap to lose: on
    MLX's CPU backend with the worker pinned to one core, the thread that
    builds a step and the one that computes the last take turns on that core
    anyway (tuning/_affinity.py). The generator still hands the token out
    next step; ``_sent_early`` skips it there.
    """

    kind = "batched"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int | None,
        decode_concurrency: int,
        prefill_batch_size: int,
        prefill_step_size: int,
        prompt_cache_bytes: int,
        prefill_bucket: int,
        first_tokens_always_early: bool,
        progress: Callable[[], None],
        vision: Vision | None = None,
        share: TokenShare | None = None,
    ) -> None:
        super().__init__(
            model, tokenizer, context_length=context_length, prompt_cache_bytes=prompt_cache_bytes, progress=progress, vision=vision, share=share
        )
        # Whether newcomers to a running batch get their first tokens early too (see the class's docstring).
        self._always_early = first_tokens_always_early
        self._prefill_step_size = prefill_step_size
        # A fresh generator, as at the start and after a failed step.
        self._new_generator = functools.partial(
            Generator,
            model,
            decode_concurrency=decode_concurrency,
            prefill_batch_size=prefill_batch_size,
            prefill_step_size=prefill_step_size,
            prefill_bucket=prefill_bucket,
        )
        # A request that finds nothing else running is decoded alone on a plain
        # cache until a second arrives (see _mlx_lm/_solo.py).
        self._alone: _Alone | None = None
        # Failures made outside a step (moving a sequence into the batch), sent with the next.
        self._carried_failures: list[tuple[int, RequestError]] = []
        self._stop_at_eos = StopSequences([[token] for token in self._eos])
        self._never_stop = StopSequences(None)
        self._generator = self._new_generator()
        self._by_uid: dict[int, SequenceOutput] = {}
        self._uid_of: dict[int, int] = {}
        # Requests as admitted: one that has sent nothing yet can start again
        # after a failed step (once), instead of failing with the step.
        self._requests: dict[int, Generate] = {}
        self._retries = RetryOnce()
        # Sequences whose first token went out a step before the generator hands it out.
        self._sent_early: set[int] = set()

    @property
    def active(self) -> int:
        # Carried deltas and failures count as work: they go out with the next step.
        return len(self._by_uid) + (self._alone is not None) + len(self._prefills) + (len(self._carried) + len(self._carried_failures) > 0)

    def _admit(self, request: Generate, prompt: list[int]) -> None:
        alone = self._alone
        if request.request_id in self._uid_of or (alone is not None and alone.request.request_id == request.request_id):
            raise RequestError(ErrorKind.INVALID_REQUEST, f"duplicate request id {request.request_id}")
        params = self._sampling(request.params)
        sampler, processors = make_sampler(params, share=self._share), make_processors(params, self.grammars)
        cache, cached, hit = self._start_cache(request, prompt)
        sequence = self._new_sequence(request, params, prompt, hit, processors)
        if alone is None and not self._uid_of:
            decoder = SoloDecoder(
                self._model,
                cache if cache is not None else make_prompt_cache(self._model),
                prompt[cached:],
                list(prompt),
                sampler,
                processors,
                self._prefill_step_size,
            )
            self._alone = _Alone(request, sequence, decoder, cache)
            return
        if alone is not None:
            try:
                self._join_batch()
            except Exception as exc:  # noqa: BLE001 - the moving sequence fails, not the newcomer
                self._carried_failures.append((alone.request.request_id, self._failed(exc)))
        self._insert(request, params, sequence, prompt[cached:], cache, prompt[:cached], params.max_tokens, sampler, processors)

    def _insert(
        self,
        request: Generate,
        params: SamplingParams,
        sequence: SequenceOutput,
        rest: list[int],
        cache: list[Any] | None,
        cached_tokens: list[int],
        max_tokens: int,
        sampler: Sampler,
        processors: list[Processor],
    ) -> None:
        """Into the generator: ``rest`` of the prompt to prefill, after ``cache`` holding ``cached_tokens``."""
        uid = self._generator.add(
            rest,
            cache=cache,
            cached_tokens=cached_tokens,
            max_tokens=max_tokens,
            sampler=sampler,
            processors=processors,
            stop=self._never_stop if params.ignore_eos else self._stop_at_eos,
        )
        self._by_uid[uid] = sequence
        self._uid_of[request.request_id] = uid
        self._requests[request.request_id] = request

    def _join_batch(self) -> None:
        """The sequence decoded alone moves into the batch, as if it had been there all along."""
        alone, self._alone = self._alone, None
        assert alone is not None
        decoder, sequence = alone.decoder, alone.sequence
        params = sequence.params
        if not decoder.prefilled:
            # Its prompt is not all in yet: it joins as a prompt does, from what its cache holds.
            held = len(decoder.seen) - len(decoder.rest) + decoder.done
            cache = decoder.cache if decoder.done or alone.prompt_cache is not None else None
            self._insert(
                alone.request, params, sequence, decoder.rest[decoder.done :], cache, decoder.seen[:held],
                params.max_tokens, decoder.sampler, decoder.processors,
            )
            return
        token = decoder.take_unfed()
        if token is not None:
            # Its first token went out already and is not in the cache yet: the
            # batch's first input for it, not an output again.
            held = decoder.seen[:-1]
        else:
            # The cache holds decoder.seen; the token sampled next is not fed yet.
            # It is this sequence's next output, and the batch's first input for it.
            token, logprobs = decoder.take_pending()
            delta = self._accept_token(sequence, token, logprobs)
            if delta is not None:
                self._carried.append(delta)
                if delta.finish_reason is not None:
                    self._remember_held(decoder.cache, decoder.seen, sequence)
                    return
            held = list(decoder.seen)
        self._insert(
            alone.request, params, sequence, [token], decoder.cache, held,
            params.max_tokens - sequence.completion_tokens, decoder.sampler, decoder.processors,
        )

    def _step_alone(self) -> tuple[Delta | None, tuple[int, RequestError] | None]:
        alone = self._alone
        assert alone is not None
        try:
            failpoint("step")
            if not alone.decoder.prefilled and not alone.decoder.prefill_step():
                self._consecutive_failures = 0
                return None, None  # more of the prompt to go; the worker sends a heartbeat
            last = alone.sequence.completion_tokens + 1 >= alone.sequence.params.max_tokens
            token, logprobs = alone.decoder.next(last=last)
        except Exception as exc:  # noqa: BLE001 - this sequence's failure, handled as a batch's would be
            self._alone = None
            error = self._failed(exc)
            request_id = alone.request.request_id
            if not self._retries.allows(request_id, sent=alone.sequence.completion_tokens > 0):
                self._retries.forget(request_id)
                return None, (request_id, error)
            # Nothing sent yet: it starts again, once, from a fresh cache.
            try:
                self.admit(alone.request)
            except RequestError as again:
                return None, (request_id, again)
            except Exception as again:  # noqa: BLE001 - as the first failure
                return None, (request_id, generation_failure(again))
            self._retries.mark(request_id)
            return None, None
        self._consecutive_failures = 0
        delta = self._accept_token(alone.sequence, token, logprobs)
        if delta is not None and delta.finish_reason is not None:
            self._alone = None
            self._retries.forget(alone.request.request_id)
            self._remember_held(alone.decoder.cache, alone.decoder.seen, alone.sequence)
        return delta, None

    def _forget(self, request_id: int) -> None:
        uid = self._uid_of.pop(request_id)
        del self._by_uid[uid]
        self._sent_early.discard(uid)
        del self._requests[request_id]
        self._retries.forget(request_id)

    def cancel(self, request_id: int) -> bool:
        if self._prefills.cancel(request_id):
            return True
        self._carried = [delta for delta in self._carried if delta.request_id != request_id]
        self._carried_failures = [failure for failure in self._carried_failures if failure[0] != request_id]
        if self._alone is not None and self._alone.request.request_id == request_id:
            self._alone = None
            self._retries.forget(request_id)
            return True
        uid = self._uid_of.get(request_id)
        if uid is None:
            return False
        self._forget(request_id)
        self._generator.remove([uid])
        return True

    def cancel_all(self) -> None:
        self._prefills.clear()
        if self._alone is not None:
            self.cancel(self._alone.request.request_id)
        for request_id in list(self._uid_of):
            self.cancel(request_id)

    def step(self) -> StepResult:
        # First: a choice whose prefill ends here may move a sequence into the batch, carrying its next token,
        # which must go out before the batch's next one.
        prefill_failures = self._advance_prefills()
        deltas, self._carried = self._carried, []
        failures, self._carried_failures = self._carried_failures, []
        failures.extend(prefill_failures)
        if self._alone is not None:
            delta, failure = self._step_alone()
            if delta is not None:
                deltas.append(delta)
            if failure is not None:
                failures.append(failure)
        if self._uid_of:
            batch_deltas, batch_failures = self._step_batch()
            deltas.extend(batch_deltas)
            failures.extend(batch_failures)
        return deltas, failures

    def _step_batch(self) -> StepResult:
        try:
            failpoint("step")
            started, responses = self._generator.next()
            # Sequences whose prompt went all in during this step: their first tokens, now (see the class's docstring).
            firsts = self._generator.first_tokens(
                [response.uid for response in started if response.end_of_prompt], always=self._always_early
            )
        except Exception as exc:  # noqa: BLE001 - the batch failed as a whole
            return [], self._recover(self._failed(exc))
        self._consecutive_failures = 0
        deltas = []
        for response in responses:
            sequence = self._by_uid.get(response.uid)
            if sequence is None:
                continue
            # This step's token for it may be the first, sent early a step ago: not counted twice.
            sent_early = response.uid in self._sent_early
            if sent_early:
                self._sent_early.discard(response.uid)
                if response.finish_reason is None:
                    continue
            finish_reason = response.finish_reason
            if response.prompt_cache is not None:
                self._remember(list(response.all_tokens), response.prompt_cache, sequence)
            # A stop token ends the sequence and is not part of its text.
            token = None if finish_reason == "stop" or sent_early else response.token
            delta = sequence.accept(token, finish_reason, response.logprobs)
            if delta is not None:
                deltas.append(delta)
                if delta.finish_reason is not None:
                    if finish_reason is None:  # ended by a stop string: leave the batch
                        self._generator.remove([response.uid])
                    self._forget(sequence.request_id)
        ended_at_first = []
        for uid, (token, logprobs) in firsts.items():
            sequence = self._by_uid.get(uid)
            if sequence is None:
                continue
            delta = self._accept_token(sequence, token, logprobs)
            if delta is None or delta.finish_reason is None:
                self._sent_early.add(uid)
            else:
                ended_at_first.append(uid)
            if delta is not None:
                deltas.append(delta)
        if ended_at_first:
            # Out of the batch before its next step, their prompts' caches kept: in one removal, as the
            # batch's caches are filtered once per removal (a burst of max_tokens=1 requests ends together).
            for uid, (cache, tokens) in self._generator.remove(ended_at_first, return_prompt_caches=True).items():
                self._remember(list(tokens), cache, self._by_uid[uid])
            for uid in ended_at_first:
                self._forget(self._by_uid[uid].request_id)
        return deltas, []

    def _recover(self, error: RequestError) -> list[tuple[int, RequestError]]:
        """After a failed step: a clean generator (the old one's state is unknown).

        Sequences that have sent output fail with the step; those that have sent
        nothing yet (waiting, or in prefill) start again in the new generator,
        once: a prompt that fails twice is the likely cause and fails too.
        """
        failures: list[tuple[int, RequestError]] = []
        again: list[Generate] = []
        for request_id, uid in self._uid_of.items():
            if self._retries.allows(request_id, sent=self._by_uid[uid].completion_tokens > 0):
                again.append(self._requests[request_id])
            else:
                failures.append((request_id, error))
        self._by_uid.clear()
        self._uid_of.clear()
        self._requests.clear()
        self._retries.clear()
        self._sent_early.clear()
        with contextlib.suppress(Exception):
            self._generator.close()
        self._generator = self._new_generator()
        for request in again:
            try:
                self.admit(request)
            except RequestError as exc:
                failures.append((request.request_id, exc))
            else:
                self._retries.mark(request.request_id)
        return failures
