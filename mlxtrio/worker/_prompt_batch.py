"""mlx-lm's prompt batch, made cheaper where a server's traffic meets it.

**A burst moves whole.** When every prompt in the batch is in, mlx-lm's
``split`` deep-copies the batch's KV cache and filters both copies, to hand
the finished prompts to generation and keep the rest. A burst of requests
that finds the engine idle is exactly that case: all of them end their
prompts in the same step and all of them move. ``PromptBatch`` hands the
batch over as it is instead: a burst's KV cache is not copied on its way
to generation (mlx-lm copies it twice, the deep copy and then the filter's
gather). On the 2-core CI machine with the demo model, whose cache is
small, the burst's first step was no faster beyond the noise
(bench/burst_probe.py, docs/PERFORMANCE.md); the copy grows with the
model and the prompts. Outputs are the same: the copy held the same
arrays, and the filter only trimmed left padding that every row shares,
which the mask hides.

**Prompt-length buckets** (``BucketedPromptBatch``): few shapes, so a backend
that compiles per shape compiles few. MLX's CUDA backend compiles for each
new input shape: on an H100 a prompt length seen for the first time costs
50-750 ms to prefill, and 7-12 ms once seen (bench/prefill_probe.py,
docs/PERFORMANCE.md). A server meets a new length with nearly every request.
mlx-lm's prompt batch already right-pads the prompts of one prefill step to
the longest and masks the padding; here the padded length is rounded up to a
bucket, so lengths repeat. The padding is masked, so outputs are unchanged;
the cost is the padded tokens' compute, at most one bucket's worth per
prefill chunk.

Both follow mlx-lm 0.32 (pinned): the engine puts one in place of the
generator's own empty prompt batch, and batches it takes in are merged into
it, so its class stays.
"""

from __future__ import annotations

import copy

import mlx.core as mx
from mlx_lm.generate import PromptProcessingBatch, _right_pad_prompts

__all__ = ["BucketedPromptBatch", "PromptBatch", "bucket_length"]


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

    ``prompt`` follows mlx-lm 0.32's own (pinned) and differs only in the
    padded length, which is also applied to a single prompt.
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
