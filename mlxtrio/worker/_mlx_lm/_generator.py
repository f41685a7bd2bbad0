"""mlx-lm's ``BatchGenerator`` and its prompt batch, made cheaper where a server's traffic meets them.

**A burst moves whole.** When every prompt in the batch is in, mlx-lm's
``split`` deep-copies the batch's KV cache and filters both copies, to hand
the finished prompts to generation and keep the rest. A burst of requests
that finds the engine idle is exactly that case: all of them end their
prompts in the same step and all of them move. ``PromptBatch`` hands the
batch over as it is instead, so a burst's KV cache is not copied on its way
to generation, a copy that grows with the model and the prompts. Outputs
are the same: the copy held the same arrays, and the filter only trimmed
left padding that every row shares, which the mask hides.

**Prompt-length buckets** (``BucketedPromptBatch``): few shapes, so a backend
that compiles per shape compiles few. MLX's CUDA backend compiles for each
new input shape, so a prompt length seen for the first time prefills many
times slower than one seen before (docs/PERFORMANCE.md), and a server meets
a new length with nearly every request. mlx-lm's prompt batch already
right-pads the prompts of one prefill step to the longest and masks the
padding; here the padded length is rounded up to a bucket, so lengths
repeat. The padding is masked, so outputs are unchanged; the cost is the
padded tokens' compute, at most one bucket's worth per prefill chunk.

**Merged caches with room for the next token** (``merge_caches``, used by
``Generator``): mlx-lm merges the requests' KV caches into a batch cache
that is exactly full, so the batch's first forward pass, which writes one
token more, reallocates every layer's keys and values (a block of zeros
concatenated to each: more operations and a copy of the whole cache, in
the step that gives a burst its first tokens). The merged buffers are
allocated with the room that write would have added. The rows hold the
same keys and values; only the buffer behind them is longer, as after
mlx-lm's own growth.

**First tokens read at once** (``Generator.first_tokens``): the generator
samples a sequence's first token in the step that ends its prompt but
hands it out a step later; the engine may read it in that step instead.

What is copied from mlx-lm follows the pinned release's code (see
``__init__``): the generator puts one of these prompt batches in place of
its own empty one, and batches it takes in are merged into it, so its class
stays.
"""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, PromptProcessingBatch, StopSequences, _merge_caches, _right_pad_prompts
from mlx_lm.models.cache import BatchKVCache, KVCache

from ._solo import Processor, Sampler

__all__ = ["BucketedPromptBatch", "Generator", "PromptBatch", "bucket_length", "merge_caches"]


def bucket_length(length: int, bucket: int) -> int:
    """``length`` rounded up to a multiple of ``bucket``."""
    return -(-length // bucket) * bucket


class PromptBatch(PromptProcessingBatch):
    """mlx-lm's prompt batch, handing itself over whole when all of it moves on."""

    def split(self, indices: list[int]) -> PromptProcessingBatch:
        if sorted(indices) != list(range(len(self.uids))):
            return super().split(indices)
        moved = copy.copy(self)
        # New lists: the moved batch keeps the old ones (mlx-lm's filter would clear them in place).
        self.uids, self.prompt_cache, self.tokens = [], [], []
        self.samplers, self.logits_processors, self.stop_sequences, self.max_tokens = [], [], [], []
        return moved


class BucketedPromptBatch(PromptBatch):
    """mlx-lm's prompt batch, its padding rounded up to a multiple of ``bucket`` tokens.

    ``prompt`` follows mlx-lm's own and differs only in the padded length,
    which is also applied to a single prompt.
    """

    bucket = 32

    def prompt(self, tokens: list[list[int]]) -> None:
        if len(self.uids) != len(tokens):
            raise ValueError("The batch length doesn't match the number of inputs")
        if not tokens:
            return
        for seen, new in zip(self.tokens, tokens):
            seen += new
        lengths = [len(prompt) for prompt in tokens]
        longest = max(lengths)
        # Never past a prefill chunk: a bucket larger than the chunk would only add padding.
        padded = max(longest, min(bucket_length(longest, self.bucket), self.prefill_step_size))
        padding = [padded - length for length in lengths]
        if max(padding) > 0:
            inputs = _right_pad_prompts(tokens, max_length=padded)
            for cache in self.prompt_cache:
                cache.prepare(lengths=lengths, right_padding=padding)
        else:
            inputs = mx.array(tokens)
        while inputs.shape[1] > 0:
            step = min(self.prefill_step_size, inputs.shape[1])
            self.model(inputs[:, :step], cache=self.prompt_cache)
            mx.eval([cache.state for cache in self.prompt_cache])
            mx.clear_cache()
            inputs = inputs[:, step:]
        if max(padding) > 0:
            for cache in self.prompt_cache:
                cache.finalize()
            mx.eval([cache.state for cache in self.prompt_cache])
            mx.clear_cache()


def _merge_with_room(caches: list[KVCache]) -> BatchKVCache:
    """``BatchKVCache.merge``, its buffers long enough for one more token."""
    lengths = [cache.size() for cache in caches]
    longest = max(lengths)
    if longest == 0:
        return BatchKVCache([0] * len(caches))
    padding = [longest - length for length in lengths]
    keys_like = next(cache.keys for cache in caches if cache.keys is not None)
    values_like = next(cache.values for cache in caches if cache.values is not None)
    # What update_and_fetch would grow a full buffer to for the next token.
    room = (longest // BatchKVCache.step + 1) * BatchKVCache.step
    keys = mx.zeros((len(caches), keys_like.shape[1], room, keys_like.shape[3]), dtype=keys_like.dtype)
    values = mx.zeros((len(caches), values_like.shape[1], room, values_like.shape[3]), dtype=values_like.dtype)
    for row, (pad, cache) in enumerate(zip(padding, caches)):
        if cache.keys is None:
            continue
        keys[row : row + 1, :, pad:longest] = cache.keys[..., : cache.offset, :]
        values[row : row + 1, :, pad:longest] = cache.values[..., : cache.offset, :]
    merged = BatchKVCache(padding)
    merged.keys, merged.values = keys, values
    merged.offset += longest
    merged._idx = longest  # noqa: SLF001
    return merged


def merge_caches(caches: list[list[Any]]) -> list[Any]:
    """mlx-lm's ``_merge_caches``: plain KV caches merged with room (``_merge_with_room``), others by their own ``merge``."""
    if not caches:
        return []
    merged = []
    for layer in range(len(caches[0])):
        rows = [cache[layer] for cache in caches]
        if all(type(row) is KVCache for row in rows):
            merged.append(_merge_with_room(rows))
        else:
            # This layer alone, as mlx-lm merges it (or refuses to).
            merged.extend(_merge_caches([[row] for row in rows]))
    return merged


class Generator(BatchGenerator):
    """mlx-lm's ``BatchGenerator`` on ``PromptBatch``, its new prompt batches' caches merged by ``merge_caches``."""

    def __init__(
        self, model: Any, *, decode_concurrency: int, prefill_batch_size: int, prefill_step_size: int, prefill_bucket: int
    ) -> None:
        super().__init__(
            model,
            max_tokens=1,
            completion_batch_size=decode_concurrency,
            prefill_batch_size=prefill_batch_size,
            prefill_step_size=prefill_step_size,
        )
        # Its prompt batch, empty still, becomes one of ours (``prefill_bucket`` 0: no buckets).
        if prefill_bucket > 0:
            prompt_batch = BucketedPromptBatch.empty(model, self.sampler, prefill_step_size=prefill_step_size)
            prompt_batch.bucket = prefill_bucket
        else:
            prompt_batch = PromptBatch.empty(model, self.sampler, prefill_step_size=prefill_step_size)
        self._prompt_batch = prompt_batch

    def add(
        self,
        prompt: list[int],
        *,
        cache: list[Any] | None,
        cached_tokens: list[int],
        max_tokens: int,
        sampler: Sampler,
        processors: list[Processor],
        stop: StopSequences,
    ) -> int:
        """One sequence in, its uid: ``prompt`` still to prefill, after ``cache`` (None: none) holding ``cached_tokens``."""
        (uid,) = self.insert(
            [prompt],
            caches=[cache],
            all_tokens=[cached_tokens],
            max_tokens=[max_tokens],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[stop],
        )
        return uid

    def first_tokens(self, uids: list[int], *, always: bool) -> dict[int, tuple[int, mx.array]]:
        """The first tokens of ``uids``, whose prompts went all in during the step just taken, read now.

        Reading them waits for that step's computation, which would otherwise
        overlap the building of the next: so unless ``always``, only when they
        are the whole batch (nothing else decoding pays for the wait). The
        generator still hands each out with its next step.
        """
        batch = self._generation_batch
        newcomers = set(uids)
        if not newcomers or not batch.uids:
            return {}
        if not always and not set(batch.uids) <= newcomers:
            return {}
        values = batch._next_tokens.tolist()
        return {uid: (values[row], batch._next_logprobs[row]) for row, uid in enumerate(batch.uids) if uid in newcomers}

    def _make_batch(self, n: int) -> PromptProcessingBatch:
        # mlx-lm's own, but for the merge.
        taken = [self._unprocessed_sequences.popleft() for _ in range(n)]
        for sequence in taken:
            self._currently_processing.append([sequence[1], 0, sum(len(segment) for segment in sequence[1])])
        batch = PromptProcessingBatch(
            model=self.model,
            uids=[sequence[0] for sequence in taken],
            caches=[],
            tokens=[sequence[4] for sequence in taken],
            prefill_step_size=self.prefill_step_size,
            samplers=[sequence[5] for sequence in taken],
            fallback_sampler=self.sampler,
            logits_processors=[sequence[6] for sequence in taken],
            stop_sequences=[sequence[7] for sequence in taken],
            max_tokens=[sequence[2] for sequence in taken],
        )
        batch.prompt_cache = merge_caches([sequence[3] for sequence in taken])
        return batch
