"""An echoed prompt's log probabilities: how likely the model finds each prompt token after those before it.

The legacy completions API returns them with ``echo`` and ``logprobs`` (for
scoring a text). Prefill keeps only the last position's logits, so they take
a forward pass of their own over the prompt, in chunks on a KV cache of its
own: the prompt is within the context already, and a chunk's logits are
``_CHUNK`` times the vocabulary at most.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx

from .._protocol import TokenLogprob
from ._mlx_lm import make_prompt_cache
from ._token_pieces import TokenPieces

__all__ = ["MOST_ECHOED_ENTRIES", "prompt_logprobs"]

# Prompt positions per forward pass: their logits over the vocabulary are what the pass holds.
_CHUNK = 256
# The most log probabilities (tokens and alternatives) a request's echoed prompts may return: they
# go to the orchestrator in one frame, far below the ring's largest message.
MOST_ECHOED_ENTRIES = 1 << 18


def prompt_logprobs(
    model: Any, prompt: list[int], pieces: TokenPieces, *, top: int, progress: Callable[[], None]
) -> tuple[TokenLogprob, ...]:
    """Each prompt token's log probability and ``top`` alternatives; the first token's is None (nothing predicts it).

    ``progress`` is called after each chunk: the pass runs outside a step, and a long one must not look like a hang."""
    entries = [pieces.logprob(prompt[0], None)]
    cache = make_prompt_cache(model)
    for start in range(0, len(prompt) - 1, _CHUNK):
        inputs = prompt[start : min(start + _CHUNK, len(prompt) - 1)]
        targets = prompt[start + 1 : start + 1 + len(inputs)]
        logits = model(mx.array(inputs)[None], cache=cache)[0].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        chosen = mx.take_along_axis(logprobs, mx.array(targets)[:, None], axis=-1)[:, 0]
        if top > 0:
            ids = mx.argpartition(-logprobs, top - 1, axis=-1)[:, :top]
            values = mx.take_along_axis(logprobs, ids, axis=-1)
            mx.eval(chosen, ids, values)
            alternatives = [
                tuple(pieces.logprob(token, value) for token, value in sorted(zip(row_ids, row_values), key=lambda pair: -pair[1]))
                for row_ids, row_values in zip(ids.tolist(), values.tolist())
            ]
        else:
            alternatives = [()] * len(targets)
        entries.extend(pieces.logprob(token, value, others) for token, value, others in zip(targets, chosen.tolist(), alternatives))
        progress()
    return tuple(entries)
