"""An echoed prompt's log probabilities, computed in chunks, are those of one pass over the whole prompt."""

from __future__ import annotations

import random

import mlx.core as mx
import pytest

from mlxtrio.worker._prompt_logprobs import prompt_logprobs
from mlxtrio.worker._token_pieces import TokenPieces


def test_chunked_prompt_logprobs_match_one_whole_pass(demo):
    model, tokenizer = demo
    # Longer than a chunk (256), so that the KV cache carries one chunk's context into the next.
    prompt = random.Random(7).choices(range(6, len(tokenizer)), k=600)
    chunks: list[int] = []
    entries = prompt_logprobs(model, prompt, TokenPieces(tokenizer), top=2, progress=lambda: chunks.append(len(chunks)))
    # Progress after each of its three chunks: the pass runs outside a step, and must not look like a hang.
    assert len(chunks) == 3
    logits = model(mx.array(prompt)[None])[0].astype(mx.float32)
    whole = (logits - mx.logsumexp(logits, axis=-1, keepdims=True)).tolist()
    assert len(entries) == len(prompt)
    assert entries[0].logprob is None and entries[0].top == ()
    for position, entry in enumerate(entries[1:], start=1):
        assert entry.id == prompt[position]
        assert entry.logprob == pytest.approx(whole[position - 1][prompt[position]], abs=1e-3)
        assert [alternative.logprob for alternative in entry.top] == pytest.approx(sorted(whole[position - 1], reverse=True)[:2], abs=1e-3)
