"""A sequence's sampling: its parameters as the model can take them, its sampler, its logits processors.

Each sequence has a sampler of its own (a random key of its own, so a seeded
request samples the same tokens whatever shares its batch) and logits
processors of its own (penalties, biases, its grammar's matcher).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import msgspec
import mlx.core as mx

from .._protocol import ErrorKind, SamplingParams
from ._failures import RequestError
from ._grammar import GrammarCompiler, GrammarError
from ._mlx_lm import Processor, Sampler, apply_min_p, apply_top_k, apply_top_p, make_logits_processors

if TYPE_CHECKING:
    from ._group import TokenShare

__all__ = ["GREEDY_BELOW", "make_processors", "make_sampler", "model_params"]

# Temperatures below this are greedy, as in vLLM (_SAMPLING_EPS). Sampling
# at, say, 1e-213 would scale log-probabilities by an inverse that is
# infinite in float32: every token's weight becomes -inf or NaN, and the
# "sample" is garbage (a token a grammar forbids, found by hypothesis).
# Greedy is the limit it tends to anyway.
GREEDY_BELOW = 1e-5


def _greedy(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


def model_params(params: SamplingParams, vocabulary: int | None) -> SamplingParams:
    """The request's parameters as a model of ``vocabulary`` tokens can take them.

    top_k as large as the vocabulary keeps every token, which is no top_k
    at all; mlx-lm would raise inside the step instead, and a step failure
    is the whole batch's.
    """
    if vocabulary and params.top_k >= vocabulary:
        params = msgspec.structs.replace(params, top_k=0)
    if params.grammar is not None and params.ignore_eos:
        # A finished grammar allows only the end token: it must end the sequence.
        params = msgspec.structs.replace(params, ignore_eos=False)
    return params


def make_sampler(params: SamplingParams, *, share: TokenShare | None = None) -> Sampler:
    """The request's sampler. Greedy requests share one function: a batch of them samples in one call.

    ``share``: a worker group's (every rank then takes rank 0's tokens); None in a worker of its own.
    """
    if params.temperature < GREEDY_BELOW:
        return _greedy if share is None else share.greedy
    sample = _sample(params)
    return sample if share is None else share.wrap(sample)


def _sample(params: SamplingParams) -> Sampler:
    # A key of the request's own: the global MLX key is shared by every sequence.
    # Seeds are signed 64-bit in the API; MLX keys take unsigned.
    key = mx.random.key(params.seed % (1 << 63) if params.seed is not None else secrets.randbits(63))
    inverse_temperature = 1 / params.temperature
    filters: list[Sampler] = []
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


def make_processors(params: SamplingParams, grammars: GrammarCompiler) -> list[Processor]:
    """The request's logits processors: penalties and biases, then its grammar's, if it has one."""
    processors = make_logits_processors(
        logit_bias=dict(params.logit_bias) if params.logit_bias else None,
        repetition_penalty=params.repetition_penalty or None,
        presence_penalty=params.presence_penalty or None,
        frequency_penalty=params.frequency_penalty or None,
    )
    if params.grammar is not None:
        try:
            processors.append(grammars.processor(params.grammar))
        except GrammarError as exc:
            raise RequestError(ErrorKind.INVALID_REQUEST, str(exc), param=exc.param) from exc
    return processors
