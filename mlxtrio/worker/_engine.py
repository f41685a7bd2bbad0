"""Generation in the worker: sequences advanced one token per step, round robin.

Each sequence is mlx-lm's own ``generate_step`` (its KV cache, prefill and
sampling loop) with a per-request sampler and streaming detokenizer. A step
advances every live sequence by one token and returns what each produced, so
the worker sends one frame per step for all of them, and new requests join
between steps.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import apply_top_p

from .._protocol import Delta, Generate, SamplingParams

__all__ = ["Engine", "RequestError"]


class RequestError(Exception):
    """A request the model cannot serve; ``status`` is the HTTP status for it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _make_sampler(params: SamplingParams) -> Callable[[mx.array], mx.array]:
    if params.temperature == 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    # A key of the request's own, so a seeded request samples the same tokens
    # whatever else runs beside it (the global MLX key is shared by all).
    key = mx.random.key(params.seed if params.seed is not None else secrets.randbits(63))
    inverse_temperature = 1 / params.temperature
    top_p = params.top_p

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        if 0 < top_p < 1:
            logprobs = apply_top_p(logprobs, top_p)
        key, subkey = mx.random.split(key)
        return mx.random.categorical(logprobs * inverse_temperature, key=subkey)

    return sample


@attrs.define(eq=False)
class _Sequence:
    request_id: int
    params: SamplingParams
    tokens: Iterator[tuple[mx.array, mx.array]]
    detokenizer: Any
    prompt_tokens: int
    completion_tokens: int = 0
    # Text not sent yet because it might be the start of a stop string.
    held: str = ""

    def close(self) -> None:
        close = getattr(self.tokens, "close", None)
        if close is not None:
            close()


class Engine:
    """The model, its tokenizer, and the live sequences."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int | None,
        prefill_step_size: int = 512,
        progress: Callable[[], None] = lambda: None,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._prefill_step_size = prefill_step_size
        # Called between prefill chunks: a long prompt must not look like a hang.
        self._progress = progress
        self._sequences: dict[int, _Sequence] = {}

    @property
    def active(self) -> int:
        return len(self._sequences)

    def _prompt_tokens(self, request: Generate) -> list[int]:
        tokenizer = self._tokenizer
        if request.messages is not None:
            if not getattr(tokenizer, "has_chat_template", False):
                raise RequestError(400, "this model has no chat template; use /v1/completions")
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
            except Exception as exc:  # noqa: BLE001 - a template error is the request's problem
                raise RequestError(400, f"the chat template rejected these messages: {exc}") from exc
        prompt = request.prompt or ""
        bos = getattr(tokenizer, "bos_token", None)
        return list(tokenizer.encode(prompt, add_special_tokens=bos is None or not prompt.startswith(bos)))

    def admit(self, request: Generate) -> None:
        if request.request_id in self._sequences:
            raise RequestError(400, f"duplicate request id {request.request_id}")
        prompt = self._prompt_tokens(request)
        if not prompt:
            raise RequestError(400, "the prompt is empty")
        if self._context_length is not None and len(prompt) + request.params.max_tokens > self._context_length:
            raise RequestError(
                400,
                f"this model's context is {self._context_length} tokens; the prompt has {len(prompt)} "
                f"and max_tokens asks for {request.params.max_tokens} more",
            )
        tokens = generate_step(
            mx.array(prompt),
            self._model,
            max_tokens=request.params.max_tokens,
            sampler=_make_sampler(request.params),
            prefill_step_size=self._prefill_step_size,
            prompt_progress_callback=lambda done, total: self._progress(),
        )
        detokenizer = type(self._tokenizer.detokenizer)(self._tokenizer._tokenizer)  # noqa: SLF001 - one per sequence
        self._sequences[request.request_id] = _Sequence(request.request_id, request.params, tokens, detokenizer, len(prompt))

    def cancel(self, request_id: int) -> bool:
        sequence = self._sequences.pop(request_id, None)
        if sequence is None:
            return False
        sequence.close()
        return True

    def cancel_all(self) -> None:
        for request_id in list(self._sequences):
            self.cancel(request_id)

    def step(self) -> tuple[list[Delta], list[tuple[int, RequestError]]]:
        """Advance every live sequence by one token."""
        deltas: list[Delta] = []
        failures: list[tuple[int, RequestError]] = []
        for sequence in list(self._sequences.values()):
            try:
                delta = self._advance(sequence)
            except Exception as exc:  # noqa: BLE001 - one sequence's failure is not the others'
                self.cancel(sequence.request_id)
                status = 507 if "memory" in str(exc).lower() else 500
                failures.append((sequence.request_id, RequestError(status, f"generation failed: {exc}")))
                continue
            if delta is not None:
                deltas.append(delta)
                if delta.finish_reason is not None:
                    self.cancel(sequence.request_id)
        return deltas, failures

    def _advance(self, sequence: _Sequence) -> Delta | None:
        try:
            token, _ = next(sequence.tokens)
        except StopIteration:
            return self._finish(sequence, "length")
        token = int(token.item() if hasattr(token, "item") else token)
        if token in self._tokenizer.eos_token_ids and not sequence.params.ignore_eos:
            return self._finish(sequence, "stop")
        sequence.completion_tokens += 1
        sequence.detokenizer.add_token(token)
        sequence.held += sequence.detokenizer.last_segment
        text, stopped = self._release(sequence, final=False)
        if stopped:
            return self._delta(sequence, text, "stop")
        if sequence.completion_tokens >= sequence.params.max_tokens:
            return self._finish(sequence, "length", text)
        if not text:
            return None
        return self._delta(sequence, text, None)

    def _finish(self, sequence: _Sequence, reason: str, text: str = "") -> Delta:
        sequence.detokenizer.finalize()
        sequence.held += sequence.detokenizer.last_segment
        rest, stopped = self._release(sequence, final=True)
        return self._delta(sequence, text + rest, "stop" if stopped else reason)

    @staticmethod
    def _release(sequence: _Sequence, *, final: bool) -> tuple[str, bool]:
        """Text safe to send now, and whether a stop string ended the sequence.

        Stop strings may span tokens: text that could still be the start of
        one is held back, and a stop string itself is never sent.
        """
        held = sequence.held
        stops = sequence.params.stop
        if stops:
            found = [index for index in (held.find(stop) for stop in stops) if index >= 0]
            if found:
                sequence.held = ""
                return held[: min(found)], True
        if final or not stops:
            sequence.held = ""
            return held, False
        keep = max(len(stop) for stop in stops) - 1
        cut = max(0, len(held) - keep)
        sequence.held = held[cut:]
        return held[:cut], False

    @staticmethod
    def _delta(sequence: _Sequence, text: str, finish_reason: str | None) -> Delta:
        return Delta(sequence.request_id, text, sequence.prompt_tokens, sequence.completion_tokens, finish_reason)
