"""Generation in the worker: continuous batching with mlx-lm, one step at a time.

``BatchEngine`` drives mlx-lm's ``BatchGenerator``: new requests join between
steps, prefill of newcomers is interleaved with decoding of the rest, finished
sequences leave. Each sequence keeps its own sampler (a random key of its own,
so a seeded request samples the same tokens whatever shares its batch), its
own logits processors and its own streaming detokenizer. A request that finds
the engine idle is decoded alone on a plain KV cache, faster, and moves into
the batch when a second arrives (``_solo.py``); its output is the same.

``SequentialEngine`` is the fallback for models whose KV caches cannot be
merged into a batch: each sequence is mlx-lm's ``generate_step``, and a step
advances every live sequence by one token, round robin.

Both answer ``step()`` with what every sequence produced, so the worker sends
one frame per step for all of them.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import msgspec
import mlx.core as mx

from .._protocol import Delta, ErrorKind, Generate, SamplingParams, TokenLogprob, ToolCall
from ._failpoints import failpoint
from ._grammar import GrammarCompiler, GrammarError, GrammarProcessor
from ._mlx_lm import (
    Generator,
    PromptCache,
    SoloDecoder,
    StopSequences,
    apply_min_p,
    apply_top_k,
    apply_top_p,
    can_batch,
    can_trim_prompt_cache,
    generate_step,
    make_logits_processors,
    make_prompt_cache,
    trim_prompt_cache,
)
from ._prompt_bound import PromptTooLong
from ._tokenize import PromptEncoder
from ._tools import ToolCallExtractor, chat_messages, tool_format

__all__ = ["BatchEngine", "RequestError", "SequentialEngine", "make_engine"]

# A worker whose generation fails this many times in a row, with no good step
# between, is in a state no request can fix: it exits and is started afresh.
MAX_CONSECUTIVE_FAILURES = 3
# How MLX says an allocation failed: mlx/allocator.cpp ("[malloc] Unable to
# allocate"), the Metal and CUDA allocators, and Metal's command buffer errors.
_OUT_OF_MEMORY = ("unable to allocate", "out of memory", "insufficient memory", "[metal::malloc]", "resource limit")


class RequestError(Exception):
    """A request the model cannot serve, and why, as the protocol's ``ErrorKind``."""

    def __init__(self, kind: ErrorKind, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.param = param
        self.code = code


# The prompt cache is per worker, and a worker serves one model.
_MODEL_KEY = "model"


def _greedy(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


# Temperatures below this are greedy, as in vLLM (_SAMPLING_EPS). Sampling
# at, say, 1e-213 would scale log-probabilities by an inverse that is
# infinite in float32: every token's weight becomes -inf or NaN, and the
# "sample" is garbage (a token a grammar forbids, found by hypothesis).
# Greedy is the limit it tends to anyway.
GREEDY_BELOW = 1e-5


def make_sampler(params: SamplingParams) -> Callable[[mx.array], mx.array]:
    """The request's sampler. Greedy requests share one function: a batch of them samples in one call."""
    if params.temperature < GREEDY_BELOW:
        return _greedy
    # A key of the request's own: the global MLX key is shared by every sequence.
    # Seeds are signed 64-bit in the API; MLX keys take unsigned.
    key = mx.random.key(params.seed % (1 << 63) if params.seed is not None else secrets.randbits(63))
    inverse_temperature = 1 / params.temperature
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0 < params.top_p < 1:
        filters.append(lambda logprobs: apply_top_p(logprobs, params.top_p))
    if params.min_p > 0:
        filters.append(lambda logprobs: apply_min_p(logprobs, params.min_p))
    if params.top_k > 0:
        filters.append(lambda logprobs: apply_top_k(logprobs, params.top_k))

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        for keep in filters:
            logprobs = keep(logprobs)
        key, subkey = mx.random.split(key)
        return mx.random.categorical(logprobs * inverse_temperature, key=subkey)

    return sample


def _choices(request: Generate) -> list[Generate]:
    """A request's choices as requests of their own: ids ``request_id`` onwards and, with a seed,
    ``seed + index`` for each (choices differ, and the same request gives the same choices again)."""
    if request.choices <= 1:
        return [request]
    params = request.params
    return [
        msgspec.structs.replace(
            request,
            request_id=request.request_id + index,
            choices=1,
            params=params if params.seed is None else msgspec.structs.replace(params, seed=params.seed + index),
        )
        for index in range(request.choices)
    ]


def make_processors(params: SamplingParams) -> list[Callable[[mx.array, mx.array], mx.array]]:
    return make_logits_processors(
        logit_bias=dict(params.logit_bias) if params.logit_bias else None,
        repetition_penalty=params.repetition_penalty or None,
        presence_penalty=params.presence_penalty or None,
        frequency_penalty=params.frequency_penalty or None,
    )


@attrs.define(eq=False)
class _Sequence:
    """One request's output side: detokenizer, stop strings, counts."""

    request_id: int
    params: SamplingParams
    detokenizer: Any
    prompt_tokens: int
    cached_tokens: int = 0
    completion_tokens: int = 0
    # Text not sent yet because it might be the start of a stop string.
    held: str = ""
    # Log probabilities of tokens not yet sent with a delta.
    pending_logprobs: list[TokenLogprob] = attrs.Factory(list)
    # Tool calls parsed out of the text, when the request has tools.
    tools: ToolCallExtractor | None = None
    # The sequence's grammar, when it has one: a failure of it midway ends the sequence with an error.
    grammar: GrammarProcessor | None = None

    def accept(
        self, token: int | None, finish_reason: str | None, logprob: TokenLogprob | None = None
    ) -> Delta | None:
        """Take one generated token (None: no token, just the end) and say what to send."""
        if logprob is not None:
            self.pending_logprobs.append(logprob)
        if token is not None:
            self.completion_tokens += 1
            self.detokenizer.add_token(token)
            self.held += self.detokenizer.last_segment
            text, stopped = self._release(final=False)
            if stopped:
                return self._delta(text, "stop")
            if self.completion_tokens >= self.params.max_tokens:
                finish_reason = "length"
        else:
            text = ""
        if finish_reason is None:
            return self._delta(text, None)
        self.detokenizer.finalize()
        self.held += self.detokenizer.last_segment
        rest, stopped = self._release(final=True)
        return self._delta(text + rest, "stop" if stopped else finish_reason)

    def _release(self, *, final: bool) -> tuple[str, bool]:
        """Text safe to send now, and whether a stop string ended the sequence.

        Stop strings may span tokens: text that could still be the start of
        one is held back, and a stop string itself is never sent.
        """
        held = self.held
        stops = self.params.stop
        if stops:
            found = [index for index in (held.find(stop) for stop in stops) if index >= 0]
            if found:
                self.held = ""
                return held[: min(found)], True
        if final or not stops:
            self.held = ""
            return held, False
        keep = max(len(stop) for stop in stops) - 1
        cut = max(0, len(held) - keep)
        self.held = held[cut:]
        return held[:cut], False

    def _delta(self, text: str, finish_reason: str | None) -> Delta | None:
        """What to send, or None while there is nothing (text held back, no end yet)."""
        calls: tuple[ToolCall, ...] = ()
        if self.tools is not None:
            text, found = self.tools.feed(text, final=finish_reason is not None)
            calls = tuple(found)
            if self.tools.done or (finish_reason == "stop" and self.tools.calls_made):
                finish_reason = "tool_calls"
        if not text and not calls and finish_reason is None:
            return None
        logprobs = tuple(self.pending_logprobs)
        self.pending_logprobs.clear()
        error = param = None
        if finish_reason is not None and self.grammar is not None and self.grammar.error is not None:
            # Its output ended where the grammar failed: not valid, and not to pass for it.
            param = self.params.grammar.param
            error = f"{param}: enforcing the schema failed midway: {self.grammar.error}"
        return Delta(
            self.request_id, text, self.prompt_tokens, self.completion_tokens, finish_reason, self.cached_tokens, logprobs, calls,
            error, param,
        )


def generation_failure(exc: Exception) -> RequestError:
    """The error a request gets when generation fails under it: 507 for memory, 500 otherwise."""
    if isinstance(exc, MemoryError) or any(marker in str(exc).lower() for marker in _OUT_OF_MEMORY):
        # Give what MLX holds in its cache back before anything else runs.
        mx.clear_cache()
        return RequestError(ErrorKind.OUT_OF_MEMORY, f"generation ran out of memory: {exc}")
    return RequestError(ErrorKind.INTERNAL, f"generation failed: {type(exc).__name__}: {exc}")


class _EngineBase:
    def __init__(self, model: Any, tokenizer: Any, *, context_length: int | None, prompt_cache_bytes: int) -> None:
        self._consecutive_failures = 0
        self._model = model
        self._tokenizer = tokenizer
        self._encoder = PromptEncoder(tokenizer)
        self._context_length = context_length
        self._eos = frozenset(tokenizer.eos_token_ids)
        # KV caches of finished sequences, by their tokens, bounded in bytes on
        # every insert: a later prompt that shares a prefix (the next turn of a
        # chat, a shared system prompt) skips that prefix's prefill.
        self._prompt_cache = (
            PromptCache(max_size=1 << 20, max_bytes=prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        )
        self.grammars = GrammarCompiler(tokenizer)
        # Caches remembered since the last settle(), perhaps not computed yet.
        self._unsettled: list[list[Any]] = []

    def _cached_prefix(self, prompt: list[int]) -> tuple[list[Any] | None, int]:
        """The nearest cached KV cache for ``prompt`` and how many of its tokens it holds."""
        if self._prompt_cache is None:
            return None, 0
        cache, rest = self._prompt_cache.fetch_nearest_cache(_MODEL_KEY, prompt)
        if cache is None:
            return None, 0
        if not rest:
            # The whole prompt is cached, but generation needs the logits of its
            # last token: give that token back to be computed again.
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, len(prompt) - len(rest)

    def _remember(self, tokens: list[int], cache: list[Any]) -> None:
        if self._prompt_cache is not None:
            self._prompt_cache.insert_cache(_MODEL_KEY, tokens, cache)
            self._unsettled.append(cache)

    def settle(self) -> None:
        """Compute the KV caches remembered since the last call; the worker calls it after each step's frame.

        A sequence leaving a batch leaves with its own rows of the batch's KV
        cache as mlx-lm extracts them: lazy arrays, slices of the whole
        batch's. Kept so in the prompt cache, each holds the batch's entire
        buffers alive, beyond the bytes the cache counts against its cap
        (eight sequences of the demo model that left one by one: 6.7 MB held
        for 1.1 MB counted, tests/worker/test_prompt_cache.py), and the next
        request that uses one computes the slice in its own first step.
        Computed here, after the frame with the sequences' last tokens has
        gone out, they hold just their rows: at once when the engine is idle
        (so that its memory is what it says before the next request comes),
        asynchronously while it decodes (the step in flight is not waited
        for). Should that fail (out of memory, most likely), the prompt
        cache is emptied and serving goes on.
        """
        if not self._unsettled:
            return
        arrays = [layer.state for cache in self._unsettled for layer in cache]
        self._unsettled.clear()
        try:
            failpoint("settle")
            if self.active:
                mx.async_eval(arrays)
            else:
                mx.eval(arrays)
        except Exception as exc:  # noqa: BLE001 - a cache is a speed-up: dropped, not fatal
            print(f"mlxtrio worker: could not keep finished sequences' caches ({exc}); emptying the prompt cache", file=sys.stderr)
            if self._prompt_cache is not None:
                self._prompt_cache.trim_to(n_sequences=0)

    def _remember_held(self, cache: list[Any], seen: list[int]) -> None:
        """Keep a finished sequence's cache. A pipelined decoder runs a step ahead
        of (or behind) what was read: the cache's own offset says how many of the
        tokens seen it holds."""
        if not can_trim_prompt_cache(cache):
            return
        held = cache[0].offset
        if 0 < held <= len(seen):
            self._remember(seen[:held], cache)

    def _accept_token(self, sequence: _Sequence, token: int, logprobs: mx.array) -> Delta | None:
        """A token decoded outside mlx-lm's BatchGenerator (which stops at end tokens itself):
        an end token ends the sequence and is not part of its text."""
        if token in self._eos and not sequence.params.ignore_eos:
            return sequence.accept(None, "stop")
        return sequence.accept(token, None, self._logprob(sequence.params, token, logprobs))

    @property
    def broken(self) -> bool:
        """Whether generation keeps failing whatever runs: time for a fresh process."""
        return self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES

    def _failed(self, exc: Exception) -> RequestError:
        self._consecutive_failures += 1
        return generation_failure(exc)

    @property
    def prompt_cache_bytes(self) -> int:
        return 0 if self._prompt_cache is None else self._prompt_cache.nbytes

    def admit(self, request: Generate) -> None:
        """Start the request's sequences, one per choice: they share one tokenization of its prompt.

        Should one of them fail to start, none goes on (the request fails as a whole).
        """
        prompt = self._prompt_tokens(request)
        started: list[int] = []
        try:
            for choice in _choices(request):
                self._admit(choice, prompt)
                started.append(choice.request_id)
        except Exception:
            for request_id in started:
                self.cancel(request_id)
            raise

    def _prompt_tokens(self, request: Generate) -> list[int]:
        """The request's prompt as ids; a 400 for one that cannot fit the context, refused
        by its length alone where that shows it (_prompt_bound.py), before it is tokenized."""
        tokenizer = self._tokenizer
        budget = None if self._context_length is None else self._context_length - request.params.max_tokens
        if request.messages is not None:
            if not getattr(tokenizer, "has_chat_template", False):
                raise RequestError(ErrorKind.INVALID_REQUEST, "this model has no chat template; use /v1/completions")
            messages = chat_messages(request.messages)
            extra = {"tools": json.loads(request.tools)} if request.tools else {}
            try:
                prompt = self._encoder.chat(messages, budget=budget, **extra)
            except PromptTooLong as exc:
                raise self._too_long(request, str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - a template error is the request's problem
                raise RequestError(ErrorKind.INVALID_REQUEST, f"the chat template rejected these messages: {exc}", param="messages") from exc
        else:
            text = request.prompt or ""
            bos = getattr(tokenizer, "bos_token", None)
            try:
                prompt = self._encoder.text(text, add_special_tokens=bos is None or not text.startswith(bos), budget=budget)
            except PromptTooLong as exc:
                raise self._too_long(request, str(exc)) from None
        if not prompt:
            raise RequestError(ErrorKind.INVALID_REQUEST, "the prompt is empty", param="prompt" if request.messages is None else "messages")
        if budget is not None and len(prompt) > budget:
            raise self._too_long(request, f"{len(prompt)} tokens")
        vocabulary = getattr(tokenizer, "vocab_size", None)
        if vocabulary and any(not 0 <= token < vocabulary for token, _ in request.params.logit_bias):
            raise RequestError(ErrorKind.INVALID_REQUEST, f"logit_bias names a token outside the vocabulary (0..{vocabulary - 1})", param="logit_bias")
        return prompt

    def _too_long(self, request: Generate, prompt_has: str) -> RequestError:
        return RequestError(
            ErrorKind.INVALID_REQUEST,
            f"this model's context is {self._context_length} tokens; the prompt has {prompt_has}, "
            f"and max_tokens asks for {request.params.max_tokens} more",
            param="prompt" if request.messages is None else "messages",
            code="context_length_exceeded",
        )

    def _sampling(self, params: SamplingParams) -> SamplingParams:
        """The request's parameters as the model can take them.

        top_k as large as the vocabulary keeps every token, which is no top_k
        at all; mlx-lm would raise inside the step instead, and a step failure
        is the whole batch's.
        """
        vocabulary = getattr(self._tokenizer, "vocab_size", None)
        if vocabulary and params.top_k >= vocabulary:
            params = msgspec.structs.replace(params, top_k=0)
        if params.grammar is not None and params.ignore_eos:
            # A finished grammar allows only the end token: it must end the sequence.
            params = msgspec.structs.replace(params, ignore_eos=False)
        return params

    def _processors(self, params: SamplingParams) -> list[Callable[[mx.array, mx.array], mx.array]]:
        processors = make_processors(params)
        if params.grammar is not None:
            try:
                processors.append(self.grammars.processor(params.grammar))
            except GrammarError as exc:
                raise RequestError(ErrorKind.INVALID_REQUEST, str(exc), param=exc.param) from exc
        return processors

    def _logprob(self, params: SamplingParams, token: int, logprobs: mx.array) -> TokenLogprob | None:
        """The token's log probability and the top alternatives, only when the request asked."""
        if not params.logprobs:
            return None
        top: tuple[tuple[str, float], ...] = ()
        if params.top_logprobs > 0:
            ids = mx.argpartition(-logprobs, params.top_logprobs - 1)[: params.top_logprobs]
            values = logprobs[ids]
            pairs = sorted(zip(ids.tolist(), values.tolist()), key=lambda pair: -pair[1])
            top = tuple((self._tokenizer.decode([tid]), value) for tid, value in pairs)
        return TokenLogprob(self._tokenizer.decode([token]), float(logprobs[token].item()), top)

    def _new_sequence(
        self, request: Generate, params: SamplingParams, prompt: list[int], cached: int = 0, processors: list[Any] = ()
    ) -> _Sequence:
        # A detokenizer of its own, as a reset copy of the tokenizer's: building
        # one anew converts the whole vocabulary (100 ms for 151,936 tokens),
        # and the worker admits requests one after another.
        detokenizer = self._tokenizer.detokenizer
        sequence = _Sequence(request.request_id, params, detokenizer, len(prompt), cached)
        sequence.grammar = next((each for each in processors if isinstance(each, GrammarProcessor)), None)
        if request.parse_tool_calls and self.tool_format is not None:
            sequence.tools = ToolCallExtractor(
                self._tokenizer, json.loads(request.tools) if request.tools else None, limit=request.max_tool_calls
            )
        return sequence

    @property
    def tool_format(self) -> str | None:
        return tool_format(self._tokenizer)


class BatchEngine(_EngineBase):
    """Continuous batching through mlx-lm's BatchGenerator."""

    kind = "batched"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int | None,
        decode_concurrency: int = 32,
        prefill_batch_size: int = 8,
        prefill_step_size: int = 512,
        prompt_cache_bytes: int = 1 << 30,
        prefill_bucket: int = 0,
        solo: bool = True,
        first_tokens_always_early: bool = False,
    ) -> None:
        super().__init__(model, tokenizer, context_length=context_length, prompt_cache_bytes=prompt_cache_bytes)
        # Whether newcomers to a running batch get their first tokens early too (see _first_tokens).
        self._always_early = first_tokens_always_early
        self._settings = (decode_concurrency, prefill_batch_size, prefill_step_size)
        # A request that finds nothing else running is decoded alone on a plain
        # cache until a second arrives (see _solo.py); False: always in the batch.
        self._solo = solo
        self._alone: _Alone | None = None
        # Deltas and failures made outside a step (moving a sequence into the batch), sent with the next.
        self._carried: list[Delta] = []
        self._carried_failures: list[tuple[int, RequestError]] = []
        # Prefill lengths rounded up to multiples of this (0: off): see _prompt_batch.py.
        self._prefill_bucket = prefill_bucket
        self._stop_at_eos = StopSequences([[token] for token in self._eos])
        self._never_stop = StopSequences(None)
        self._generator = self._new_generator()
        self._by_uid: dict[int, _Sequence] = {}
        self._uid_of: dict[int, int] = {}
        # Requests as admitted: one that has sent nothing yet can start again
        # after a failed step (once), instead of failing with the step.
        self._requests: dict[int, Generate] = {}
        self._retried: set[int] = set()
        # Sequences whose first token went out a step before the generator hands it out (_first_tokens).
        self._sent_early: set[int] = set()

    def _new_generator(self) -> Generator:
        decode_concurrency, prefill_batch_size, prefill_step_size = self._settings
        return Generator(
            self._model,
            decode_concurrency=decode_concurrency,
            prefill_batch_size=prefill_batch_size,
            prefill_step_size=prefill_step_size,
            prefill_bucket=self._prefill_bucket,
        )

    @property
    def active(self) -> int:
        # Carried deltas and failures count as work: they go out with the next step.
        return len(self._by_uid) + (self._alone is not None) + (len(self._carried) + len(self._carried_failures) > 0)

    def _admit(self, request: Generate, prompt: list[int]) -> None:
        alone = self._alone
        if request.request_id in self._uid_of or (alone is not None and alone.request.request_id == request.request_id):
            raise RequestError(ErrorKind.INVALID_REQUEST, f"duplicate request id {request.request_id}")
        params = self._sampling(request.params)
        sampler, processors = make_sampler(params), self._processors(params)
        cache, cached = self._cached_prefix(prompt)
        sequence = self._new_sequence(request, params, prompt, cached, processors)
        if self._solo and alone is None and not self._uid_of:
            decoder = SoloDecoder(
                self._model,
                cache if cache is not None else make_prompt_cache(self._model),
                prompt[cached:],
                list(prompt),
                sampler,
                processors,
                self._settings[2],
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
        sequence: _Sequence,
        rest: list[int],
        cache: list[Any] | None,
        cached_tokens: list[int],
        max_tokens: int,
        sampler: Callable[[mx.array], mx.array],
        processors: list[Callable[[mx.array, mx.array], mx.array]],
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
                    self._remember_held(decoder.cache, decoder.seen)
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
            if alone.sequence.completion_tokens > 0 or request_id in self._retried:
                self._retried.discard(request_id)
                return None, (request_id, error)
            # Nothing sent yet: it starts again, once, from a fresh cache.
            try:
                self.admit(alone.request)
            except RequestError as again:
                return None, (request_id, again)
            except Exception as again:  # noqa: BLE001 - as the first failure
                return None, (request_id, generation_failure(again))
            self._retried.add(request_id)
            return None, None
        self._consecutive_failures = 0
        delta = self._accept_token(alone.sequence, token, logprobs)
        if delta is not None and delta.finish_reason is not None:
            self._alone = None
            self._retried.discard(alone.request.request_id)
            self._remember_held(alone.decoder.cache, alone.decoder.seen)
        return delta, None

    def _forget(self, request_id: int) -> None:
        uid = self._uid_of.pop(request_id)
        del self._by_uid[uid]
        self._sent_early.discard(uid)
        del self._requests[request_id]
        self._retried.discard(request_id)

    def cancel(self, request_id: int) -> bool:
        self._carried = [delta for delta in self._carried if delta.request_id != request_id]
        self._carried_failures = [failure for failure in self._carried_failures if failure[0] != request_id]
        if self._alone is not None and self._alone.request.request_id == request_id:
            self._alone = None
            self._retried.discard(request_id)
            return True
        uid = self._uid_of.get(request_id)
        if uid is None:
            return False
        self._forget(request_id)
        self._generator.remove([uid])
        return True

    def cancel_all(self) -> None:
        if self._alone is not None:
            self.cancel(self._alone.request.request_id)
        for request_id in list(self._uid_of):
            self.cancel(request_id)

    def step(self) -> tuple[list[Delta], list[tuple[int, RequestError]]]:
        deltas, self._carried = self._carried, []
        failures, self._carried_failures = self._carried_failures, []
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

    def _step_batch(self) -> tuple[list[Delta], list[tuple[int, RequestError]]]:
        try:
            failpoint("step")
            started, responses = self._generator.next()
            # Sequences whose prompt went all in during this step: their first tokens, now.
            firsts = self._first_tokens([response.uid for response in started if response.end_of_prompt])
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
                self._remember(list(response.all_tokens), response.prompt_cache)
            # A stop token ends the sequence and is not part of its text.
            token = None if finish_reason == "stop" or sent_early else response.token
            logprob = None if token is None else self._logprob(sequence.params, token, response.logprobs)
            delta = sequence.accept(token, finish_reason, logprob)
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
            for cache, tokens in self._generator.remove(ended_at_first, return_prompt_caches=True).values():
                self._remember(list(tokens), cache)
            for uid in ended_at_first:
                self._forget(self._by_uid[uid].request_id)
        return deltas, []

    def _first_tokens(self, uids: list[int]) -> dict[int, tuple[int, mx.array]]:
        """The first tokens of sequences that entered generation in this step, read at once.

        mlx-lm's ``BatchGenerator`` samples a sequence's first token in the step
        that ends its prompt, but hands it out a step later, after launching the
        step that feeds it back. Waiting for it here sends it a step sooner. The
        wait costs the overlap of this step's computation with the building of
        the next, once, and every sequence in the batch pays for it. So by
        default it is done only when no other sequence is decoding (a burst
        that finds the engine idle gets its first tokens a whole step earlier);
        a newcomer to a running batch then gets its first token with the
        generator's next step, as in mlx-lm: on a GPU a big model's step is
        bound by its computation, and the overlap is worth keeping.

        ``first_tokens_always_early`` reads newcomers' first tokens early
        whatever else decodes. The worker sets it where there is no overlap to
        lose: on MLX's CPU backend with the worker pinned to one core, the
        thread that builds a step and the one that computes the last take turns
        on that core anyway (tuning/_affinity.py). A newcomer to a running batch then
        waits one step less for its first token (docs/PERFORMANCE.md).

        The generator still hands the token out next step; ``_sent_early`` skips it there.
        """
        return self._generator.first_tokens(uids, always=self._always_early)

    def _recover(self, error: RequestError) -> list[tuple[int, RequestError]]:
        """After a failed step: a clean generator (the old one's state is unknown).

        Sequences that have sent output fail with the step; those that have sent
        nothing yet (waiting, or in prefill) start again in the new generator,
        once: a prompt that fails twice is the likely cause and fails too.
        """
        failures: list[tuple[int, RequestError]] = []
        again: list[Generate] = []
        for request_id, uid in self._uid_of.items():
            if self._by_uid[uid].completion_tokens == 0 and request_id not in self._retried:
                again.append(self._requests[request_id])
            else:
                failures.append((request_id, error))
        self._by_uid.clear()
        self._uid_of.clear()
        self._requests.clear()
        self._retried.clear()
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
                self._retried.add(request.request_id)
        return failures


@attrs.define(eq=False)
class _Alone:
    """The one sequence decoded alone, outside the batch (see _solo.py)."""

    request: Generate
    sequence: _Sequence
    decoder: SoloDecoder
    # The prompt cache hit it started from (None: none), should it join before its prefill.
    prompt_cache: list[Any] | None


@attrs.define(eq=False)
class _Running:
    sequence: _Sequence
    tokens: Iterator[tuple[mx.array, mx.array]]
    cache: list[Any]
    # Every token the cache may hold: the prompt, then each token generated.
    seen: list[int]


class SequentialEngine(_EngineBase):
    """One ``generate_step`` per sequence, round robin: for models that cannot batch."""

    kind = "sequential"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int | None,
        prefill_step_size: int = 512,
        prompt_cache_bytes: int = 1 << 30,
        progress: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(model, tokenizer, context_length=context_length, prompt_cache_bytes=prompt_cache_bytes)
        self._prefill_step_size = prefill_step_size
        # Called between prefill chunks: a long prompt must not look like a hang.
        self._progress = progress
        self._running: dict[int, _Running] = {}

    @property
    def active(self) -> int:
        return len(self._running)

    def _admit(self, request: Generate, prompt: list[int]) -> None:
        if request.request_id in self._running:
            raise RequestError(ErrorKind.INVALID_REQUEST, f"duplicate request id {request.request_id}")
        params = self._sampling(request.params)
        cache, cached = self._cached_prefix(prompt)
        if cache is None:
            cache = make_prompt_cache(self._model)
        processors = self._processors(params)
        tokens = generate_step(
            mx.array(prompt[cached:]),
            self._model,
            prompt_cache=cache,
            max_tokens=params.max_tokens,
            sampler=make_sampler(params),
            logits_processors=processors,
            prefill_step_size=self._prefill_step_size,
            prompt_progress_callback=lambda done, total: self._progress(),
        )
        self._running[request.request_id] = _Running(self._new_sequence(request, params, prompt, cached, processors), tokens, cache, list(prompt))

    def cancel(self, request_id: int) -> bool:
        running = self._running.pop(request_id, None)
        if running is None:
            return False
        close = getattr(running.tokens, "close", None)
        if close is not None:
            close()
        return True

    def cancel_all(self) -> None:
        for request_id in list(self._running):
            self.cancel(request_id)

    def step(self) -> tuple[list[Delta], list[tuple[int, RequestError]]]:
        deltas: list[Delta] = []
        failures: list[tuple[int, RequestError]] = []
        for request_id, running in list(self._running.items()):
            try:
                failpoint("step")
                delta = self._advance(running)
            except Exception as exc:  # noqa: BLE001 - one sequence's failure is not the others'
                self.cancel(request_id)
                failures.append((request_id, self._failed(exc)))
                continue
            self._consecutive_failures = 0
            if delta is not None:
                deltas.append(delta)
                if delta.finish_reason is not None:
                    self._remember_held(running.cache, running.seen)
                    self.cancel(request_id)
        return deltas, failures

    def _advance(self, running: _Running) -> Delta | None:
        sequence = running.sequence
        try:
            token, logprobs = next(running.tokens)
        except StopIteration:
            return sequence.accept(None, "length")
        token = int(token.item() if hasattr(token, "item") else token)
        running.seen.append(token)
        return self._accept_token(sequence, token, logprobs)


def make_engine(
    model: Any,
    tokenizer: Any,
    *,
    context_length: int | None,
    decode_concurrency: int,
    prefill_batch_size: int,
    prefill_step_size: int,
    prompt_cache_bytes: int,
    progress: Callable[[], None],
    prefill_bucket: int = 0,
    first_tokens_always_early: bool = False,
) -> BatchEngine | SequentialEngine:
    if decode_concurrency > 1 and can_batch(model):
        return BatchEngine(
            model,
            tokenizer,
            context_length=context_length,
            decode_concurrency=decode_concurrency,
            prefill_batch_size=prefill_batch_size,
            prefill_step_size=prefill_step_size,
            prompt_cache_bytes=prompt_cache_bytes,
            prefill_bucket=prefill_bucket,
            first_tokens_always_early=first_tokens_always_early,
        )
    return SequentialEngine(
        model,
        tokenizer,
        context_length=context_length,
        prefill_step_size=prefill_step_size,
        prompt_cache_bytes=prompt_cache_bytes,
        progress=progress,
    )
