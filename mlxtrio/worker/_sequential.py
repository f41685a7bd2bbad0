"""Sequences one after another, round robin: for models whose KV caches cannot be merged into a batch.

Each sequence is mlx-lm's ``generate_step``, and a step advances every live
sequence by one token; its answer carries what every sequence produced, so
the worker sends one frame per step for all of them, as for a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import mlx.core as mx

from .._protocol import Delta, ErrorKind, Generate
from ._core import EngineCore, StepResult
from ._failpoints import failpoint
from ._failures import RequestError
from ._mlx_lm import generate_step, make_prompt_cache
from ._output import SequenceOutput
from ._sampling import make_processors, make_sampler
from ._vision import Vision

if TYPE_CHECKING:
    from ._group import TokenShare

__all__ = ["SequentialEngine"]


@attrs.define(eq=False)
class _Running:
    sequence: SequenceOutput
    tokens: Iterator[tuple[mx.array, mx.array]]
    cache: list[Any]
    # Every token the cache may hold: the prompt, then each token generated.
    seen: list[int]


class SequentialEngine(EngineCore):
    """One ``generate_step`` per sequence, round robin: for models that cannot batch."""

    kind = "sequential"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int | None,
        prefill_step_size: int,
        prompt_cache_bytes: int,
        progress: Callable[[], None],
        vision: Vision | None = None,
        share: TokenShare | None = None,
    ) -> None:
        super().__init__(
            model, tokenizer, context_length=context_length, prompt_cache_bytes=prompt_cache_bytes, progress=progress, vision=vision, share=share
        )
        self._prefill_step_size = prefill_step_size
        self._running: dict[int, _Running] = {}

    @property
    def active(self) -> int:
        # Carried deltas count as work: they go out with the next step.
        return len(self._running) + len(self._prefills) + (len(self._carried) > 0)

    def _admit(self, request: Generate, prompt: list[int]) -> None:
        if request.request_id in self._running:
            raise RequestError(ErrorKind.INVALID_REQUEST, f"duplicate request id {request.request_id}")
        params = self._sampling(request.params)
        cache, cached, hit = self._start_cache(request, prompt)
        if cache is None:
            cache = make_prompt_cache(self._model)
        processors = make_processors(params, self.grammars)
        tokens = generate_step(
            mx.array(prompt[cached:]),
            self._model,
            prompt_cache=cache,
            max_tokens=params.max_tokens,
            sampler=make_sampler(params, share=self._share),
            logits_processors=processors,
            prefill_step_size=self._prefill_step_size,
            prompt_progress_callback=lambda done, total: self._progress(),
        )
        self._running[request.request_id] = _Running(self._new_sequence(request, params, prompt, hit, processors), tokens, cache, list(prompt))

    def cancel(self, request_id: int) -> bool:
        if self._prefills.cancel(request_id):
            return True
        self._carried = [delta for delta in self._carried if delta.request_id != request_id]
        running = self._running.pop(request_id, None)
        if running is None:
            return False
        close = getattr(running.tokens, "close", None)
        if close is not None:
            close()
        return True

    def cancel_all(self) -> None:
        self._prefills.clear()
        for request_id in list(self._running):
            self.cancel(request_id)

    def step(self) -> StepResult:
        failures = self._advance_prefills()
        deltas, self._carried = self._carried, []
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
                    self._remember_held(running.cache, running.seen, running.sequence)
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
