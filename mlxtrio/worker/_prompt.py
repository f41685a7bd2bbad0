"""A request's prompt made ready for an engine: its choices, its tokens, and where the prompt cache can start it.

The chat template is rendered and the prompt tokenized here, once per
request whatever its number of choices, and checked against the context: a
prompt that cannot fit is refused by its length alone where that shows it
(``_prompt_bound.py``), before it is tokenized. The prompt cache (KV caches
of finished sequences, by their tokens) gives the nearest entry for a
prompt that shares a prefix with one seen before (the next turn of a chat,
a shared system prompt), so that prefix's prefill is skipped.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from .._protocol import ErrorKind, Generate
from ._failures import RequestError
from ._mlx_lm import PromptCache, can_trim_prompt_cache, trim_prompt_cache
from ._prompt_bound import PromptTooLong
from ._tokenize import PromptEncoder
from ._tools import chat_messages
from ._vision import Vision

__all__ = ["COUNT_CONTEXTS", "COUNT_FLOOR", "PromptTokens", "count_bound", "choices", "keep_cache", "nearest_cache", "prompt_source"]

# The prompt cache is per worker, and a worker serves one model.
_MODEL_KEY = "model"
# A count may exceed the context (it tells how far over a conversation is), up to this many contexts, or
# COUNT_FLOOR tokens where that is more (an agent's opening prompt alone can be several small contexts):
# past that, tokenizing it would hold the worker's one thread for seconds, and the answer would not change what a client does.
COUNT_CONTEXTS = 2
COUNT_FLOOR = 65_536


def count_bound(context_length: int) -> int:
    """The most tokens a count's prompt may have, for a model of ``context_length``."""
    return max(COUNT_FLOOR, COUNT_CONTEXTS * context_length)


def choices(request: Generate) -> list[Generate]:
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


def _parts(request: Generate) -> list[Generate]:
    """A request of several prompts as a request per prompt, each with its share of the choices and their ids."""
    prompts = request.prompts
    if len(prompts) <= 1:
        return [request]
    each = request.choices // len(prompts)
    return [
        msgspec.structs.replace(request, request_id=request.request_id + index * each, choices=each, prompts=(prompt,))
        for index, prompt in enumerate(prompts)
    ]


def prompt_source(request: Generate) -> str | tuple[int, ...]:
    """A completion request's one prompt, as sent: its text, or its token ids."""
    return request.prompts[0] if request.prompts else request.prompt or ""


class PromptTokens:
    """Requests' prompts as token ids, for one model's tokenizer and context."""

    def __init__(self, tokenizer: Any, *, context_length: int | None, vision: Vision | None = None) -> None:
        self._tokenizer = tokenizer
        self._vision = vision
        self._encoder = PromptEncoder(tokenizer)
        self._context_length = context_length

    def sequences(self, request: Generate) -> list[tuple[Generate, list[int]]]:
        """Each sequence of ``request`` with its prompt's ids (one list per prompt, whatever its choices).
        Every prompt is tokenized, or refused with the whole request, before any sequence starts."""
        tokenized = [(part, self(part)) for part in _parts(request)]
        return [(self.fit(choice, prompt), prompt) for part, prompt in tokenized for choice in choices(part)]

    def __call__(self, request: Generate) -> list[int]:
        """The request's prompt as ids; refused (``INVALID_REQUEST``) if it cannot fit the context with its
        max_tokens (with one token at least, where it named none). A count is held to ``COUNT_CONTEXTS`` contexts."""
        tokenizer = self._tokenizer
        room = 1 if request.params.fit_context else request.params.max_tokens
        if self._context_length is None:
            budget = None
        else:
            budget = count_bound(self._context_length) if request.count_only else self._context_length - room
        if request.images and self._vision is None:
            raise RequestError(
                ErrorKind.INVALID_REQUEST, f"{request.images[0].where}: this model does not take images, only text", param=request.images[0].where
            )
        if request.messages is not None:
            if not getattr(tokenizer, "has_chat_template", False):
                raise RequestError(ErrorKind.INVALID_REQUEST, "this model has no chat template; use /v1/completions")
            messages = chat_messages(request.messages)
            extra: dict[str, Any] = {"tools": json.loads(request.tools)} if request.tools else {}
            if request.thinking is not None:
                # mlx-lm's wrapper gives it to the template under the model's own name for it.
                extra["enable_thinking"] = request.thinking
            try:
                prompt = self._encoder.chat(messages, budget=budget, **extra)
            except PromptTooLong as exc:
                raise self._too_long(request, exc.fewest_tokens, at_least=True) from None
            except Exception as exc:  # noqa: BLE001 - a template error is the request's problem
                raise RequestError(ErrorKind.INVALID_REQUEST, f"the chat template rejected these messages: {exc}", param="messages") from exc
            if request.images:
                assert self._vision is not None
                prompt = self._vision.tokens(request, prompt)
        elif isinstance(source := prompt_source(request), tuple):
            prompt = self._token_ids(source)
        else:
            bos = getattr(tokenizer, "bos_token", None)
            try:
                prompt = self._encoder.text(source, add_special_tokens=bos is None or not source.startswith(bos), budget=budget)
            except PromptTooLong as exc:
                raise self._too_long(request, exc.fewest_tokens, at_least=True) from None
        if not prompt:
            raise RequestError(ErrorKind.INVALID_REQUEST, "the prompt is empty", param="prompt" if request.messages is None else "messages")
        if budget is not None and len(prompt) > budget:
            raise self._too_long(request, len(prompt))
        vocabulary = getattr(tokenizer, "vocab_size", None)
        outside = [token for token, _ in request.params.logit_bias if not 0 <= token < vocabulary] if vocabulary else []
        if outside:
            raise RequestError(
                ErrorKind.INVALID_REQUEST, f"logit_bias names token {outside[0]}, outside the vocabulary (0..{vocabulary - 1})", param="logit_bias"
            )
        return prompt

    def _token_ids(self, ids: tuple[int, ...]) -> list[int]:
        """A prompt sent as token ids, each within the vocabulary (its added tokens included)."""
        size = len(self._tokenizer)
        outside = next((token for token in ids if not 0 <= token < size), None)
        if outside is not None:
            raise RequestError(ErrorKind.INVALID_REQUEST, f"prompt token id {outside} is outside the vocabulary (0..{size - 1})", param="prompt")
        return list(ids)

    def fit(self, request: Generate, prompt: list[int]) -> Generate:
        """``request`` with the max_tokens that ``prompt`` leaves room for, where it named none (up to the server's cap)."""
        params = request.params
        if not params.fit_context or self._context_length is None or request.count_only:
            return request
        room = min(params.max_tokens, self._context_length - len(prompt))
        return msgspec.structs.replace(request, params=msgspec.structs.replace(params, max_tokens=room))

    def _too_long(self, request: Generate, tokens: int, *, at_least: bool = False) -> RequestError:
        """OpenAI's code and wording (clients and litellm recognise both: "This model's maximum context length is")."""
        what = "prompt" if request.messages is None else "messages"
        resulted = f"at least {tokens}" if at_least else f"{tokens}"
        if request.count_only:
            return RequestError(
                ErrorKind.INVALID_REQUEST,
                f"A count's {what} may have at most {count_bound(self._context_length)} tokens (the more of {COUNT_FLOOR} and "
                f"{COUNT_CONTEXTS} times this model's maximum context length of {self._context_length} tokens); yours has {resulted}.",
                param=what,
                code="context_length_exceeded",
            )
        if request.params.fit_context:
            however = f"your {what} resulted in {resulted} tokens, leaving no room for a completion"
        else:
            completion = request.params.max_tokens
            total = f"at least {tokens + completion}" if at_least else f"{tokens + completion}"
            however = f"you requested {total} tokens ({resulted} in the {what}, {completion} in the completion)"
        return RequestError(
            ErrorKind.INVALID_REQUEST,
            f"This model's maximum context length is {self._context_length} tokens. However, {however}. "
            f"Please reduce the length of the {what} or completion.",
            param=what,
            code="context_length_exceeded",
        )


def nearest_cache(prompt_cache: PromptCache | None, prompt: list[int]) -> tuple[list[Any] | None, int]:
    """The nearest cached KV cache for ``prompt`` (a copy of its own) and how many of its tokens it holds."""
    if prompt_cache is None:
        return None, 0
    cache, rest = prompt_cache.fetch_nearest_cache(_MODEL_KEY, prompt)
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


def keep_cache(prompt_cache: PromptCache, tokens: list[int], cache: list[Any]) -> None:
    """Keep a finished sequence's KV cache, holding ``tokens``, for the prompts that will share its prefix."""
    prompt_cache.insert_cache(_MODEL_KEY, tokens, cache)
