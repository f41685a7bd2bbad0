"""One sequence decoded alone, on a plain KV cache, until a second one arrives.

mlx-lm's ``BatchGenerator`` serves one sequence as a batch of one: a batch
KV cache, an attention mask, per-sequence bookkeeping, which make one stream
slower than ``generate_step`` (docs/PERFORMANCE.md). So a request that finds
the engine idle is decoded as ``generate_step`` does: a plain cache, on
mlx-lm's generation stream, the next step launched before the current token
is read. The first token is the exception: it goes out before the step after
it is launched, since the client is waiting for it. Its prompt goes in a
chunk per engine step, as in the batch. When another request arrives, the
sequence joins the batch: its cache and the token sampled next (not yet fed
to the model) go into the generator as a prompt cache and a one-token
prompt, exactly where a batched sequence would have been (right after the
first token, that token is the one-token prompt). The sampler and the logits
processors are called once per token either way, so seeded sampling and
grammars do not notice the move.

``generate_step`` itself cannot be used: it keeps the sampled-but-not-fed
token to itself, and without it the move would cost a token's sampling twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import mlx.core as mx
from mlx_lm.generate import generation_stream

__all__ = ["Processor", "Sampler", "SoloDecoder"]

# mlx-lm's sampler (log probabilities -> token) and logits processor ((tokens so far, logits) -> logits).
Sampler = Callable[[mx.array], mx.array]
Processor = Callable[[mx.array, mx.array], mx.array]


@attrs.define(eq=False)
class SoloDecoder:
    """The model side of one sequence: the prompt a chunk per ``prefill_step()``, then a token per ``next()``."""

    model: Any
    cache: list[Any]
    # Prompt tokens not in ``cache`` when it started; ``done`` of them are in it now.
    rest: list[int]
    # Every token the cache holds or is about to: the prompt, then each token generated.
    seen: list[int]
    sampler: Sampler
    processors: list[Processor]
    prefill_step_size: int
    done: int = 0
    # The next token (and its log probabilities), sampled, not yet fed to the model.
    pending: tuple[mx.array, mx.array] | None = None
    # The first token, once ``next()`` returned it: read before the step after
    # it was launched, so that it goes out a step's launch sooner (the time to
    # first token), and fed to the model at the next ``next()``.
    unfed: mx.array | None = None
    # Tokens ``next()`` has returned.
    produced: int = 0
    # What the processors see, only when there are any: every token, the prompt's too, as in the batch.
    _context: mx.array | None = None

    def __attrs_post_init__(self) -> None:
        if self.processors:
            self._context = mx.array(self.seen[: len(self.seen) - len(self.rest)])

    @property
    def prefilled(self) -> bool:
        """Whether the whole prompt is in the cache and the first token is on its way (or out)."""
        return self.done == len(self.rest)

    def prefill_step(self) -> bool:
        """One chunk of the prompt into the cache, as the batch does between steps; True once it is all in.

        A chunk at a time, so that the worker answers pings, cancellations and
        newcomers between chunks of a long prompt, as it does for the batch.
        """
        remaining = len(self.rest) - self.done
        if remaining > 1:
            chunk = mx.array(self.rest[self.done : self.done + min(self.prefill_step_size, remaining - 1)])
            with mx.stream(generation_stream):
                self.model(chunk[None], cache=self.cache)
            mx.eval([c.state for c in self.cache])
            self._extend_context(chunk)
            self.done += chunk.size
            if len(self.rest) - self.done > 1:
                return False
        # The prompt's last token: the first forward step, sampling the first token.
        self.pending = self._forward(mx.array(self.rest[self.done :]))
        self.done = len(self.rest)
        return True

    def next(self, *, last: bool) -> tuple[int, mx.array]:
        """The next token and its log probabilities; ``last``: no token will be asked for after it."""
        first = self.produced == 0
        if self.unfed is not None:
            # The first token went out before the step after it was launched: launch it now.
            self.pending, self.unfed = self._forward(self.unfed), None
        if self.pending is None:
            raise RuntimeError("no token is on its way: the prompt is not in yet, or the sequence has ended")
        token, logprobs = self.pending
        # Launch the step after this one before waiting for this one's token
        # (as generate_step does), unless this is the last, or the first: the
        # client is waiting for that one, and building and launching a step
        # costs about as long as a step (on a GPU, a small model's whole step).
        self.pending = None if last or first else self._forward(token)
        value = int(token.item())
        if first and not last:
            self.unfed = token
        self.seen.append(value)
        self.produced += 1
        return value, logprobs

    def take_unfed(self) -> int | None:
        """The token returned last but not yet in the cache, if there is one, for the batch to feed."""
        unfed, self.unfed = self.unfed, None
        return None if unfed is None else int(unfed.item())

    def take_pending(self) -> tuple[int, mx.array]:
        """The sampled, unfed token, for the batch to take over from here."""
        if self.pending is None:
            raise RuntimeError("no token is on its way: the prompt is not in yet, or the sequence has ended")
        token, logprobs = self.pending
        self.pending = None
        return int(token.item()), logprobs

    def _extend_context(self, tokens: mx.array) -> None:
        if self._context is not None:
            self._context = tokens if self._context.size == 0 else mx.concatenate([self._context, tokens])

    def _forward(self, tokens: mx.array) -> tuple[mx.array, mx.array]:
        # On mlx-lm's generation stream, as generate_step and BatchGenerator
        # compute: the cache moves into the batch with nothing to wait for on
        # another stream.
        with mx.stream(generation_stream):
            tokens = tokens.reshape(-1)
            logits = self.model(tokens[None], cache=self.cache)[:, -1, :]
            self._extend_context(tokens)
            for processor in self.processors:
                logits = processor(self._context, logits)
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            token = self.sampler(logprobs)
            logprobs = logprobs.squeeze(0)
        mx.async_eval(token, logprobs)
        return token, logprobs
