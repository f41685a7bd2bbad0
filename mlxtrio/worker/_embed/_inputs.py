"""A request's inputs as token ids, checked: texts tokenized here, ids checked against the vocabulary, each fitted to the context.

A text gets the tokenizer's special tokens (BERT's ``[CLS]``/``[SEP]``, a
decoder embedding model's end token), as the model was trained to see it;
token ids are taken as they are. An input over the context is refused,
naming it (``input[3]``), unless the request asks for it to be cut: then a
text keeps the special tokens the tokenizer puts at its end, as a
tokenizer's own truncation does, and ids keep their first tokens.
"""

from __future__ import annotations

from typing import Any

from ... import _protocol as p
from .._failures import RequestError
from .._prompt_bound import PromptTooLong
from .._tokenize import PromptEncoder

__all__ = ["InputTokens"]

# Cutting a long text: tokenize a prefix of this many characters a token kept (more while that yields too few), and
# keep this many tokens more than the cut needs before trusting the prefix's tokens.
_CHARACTERS_PER_TOKEN = 8
_MARGIN_TOKENS = 32
# A text whose tokens show where the tokenizer's special tokens go: none of its own are special.
_PROBE = "a"


class InputTokens:
    """Token ids for an ``Embed``'s inputs, within ``max_tokens`` each."""

    def __init__(self, tokenizer: Any, *, max_tokens: int, vocabulary: int) -> None:
        self._encoder = PromptEncoder(tokenizer)
        self.max_tokens = max_tokens
        self._vocabulary = vocabulary
        # The special tokens the tokenizer ends a text with, kept when a text is cut.
        plain = self._encoder.text(_PROBE, add_special_tokens=False)
        marked = self._encoder.text(_PROBE, add_special_tokens=True)
        self._suffix = marked[marked.index(plain[0]) + len(plain) :] if plain and plain[0] in marked else []

    def _refuse(self, param: str, message: str, code: str | None = None) -> RequestError:
        return RequestError(p.ErrorKind.INVALID_REQUEST, f"{param}: {message}", param=param, code=code)

    def _too_long(self, param: str, tokens: int, *, at_least: bool = False) -> RequestError:
        count = f"at least {tokens}" if at_least else str(tokens)
        return self._refuse(
            param,
            f"{count} tokens, more than this model's context of {self.max_tokens} tokens",
            "context_length_exceeded",
        )

    def of(self, message: p.Embed) -> list[list[int]]:
        """Each input's ids, in order; ``RequestError`` naming the first input that cannot be embedded."""
        if not message.inputs:
            raise self._refuse(message.param, "no inputs to embed")
        return [self._one(each, f"{message.param}[{index}]", truncate=message.truncate) for index, each in enumerate(message.inputs)]

    def _leading(self, text: str) -> list[int]:
        """``text``'s tokens, at least its first ``max_tokens`` of them as its whole tokenization has them: only as much
        of a long text as that needs is tokenized (a request's text may be megabytes; its cut keeps a few hundred tokens)."""
        wanted = self.max_tokens + _MARGIN_TOKENS
        span = wanted * _CHARACTERS_PER_TOKEN
        while span < len(text):
            ids = self._encoder.text(text[:span], add_special_tokens=True)
            # The tokens kept lie well before the cut, where the words the cut splits are tokenized otherwise.
            if len(ids) >= wanted:
                return ids
            span *= 4
        return self._encoder.text(text, add_special_tokens=True)

    def _one(self, given: str | tuple[int, ...], param: str, *, truncate: bool) -> list[int]:
        limit = self.max_tokens
        if isinstance(given, str):
            if not given:
                raise self._refuse(param, "an empty string has nothing to embed")
            try:
                ids = self._leading(given) if truncate else self._encoder.text(given, add_special_tokens=True, budget=limit)
            except PromptTooLong as exc:
                raise self._too_long(param, exc.fewest_tokens, at_least=True) from exc
            if len(ids) > limit and truncate:
                suffix = self._suffix if len(self._suffix) < limit else []
                return ids[: limit - len(suffix)] + suffix
        else:
            if not given:
                raise self._refuse(param, "an empty list of tokens has nothing to embed")
            bad = next((token for token in given if not 0 <= token < self._vocabulary), None)
            if bad is not None:
                raise self._refuse(param, f"token {bad} is not in this model's vocabulary (0 to {self._vocabulary - 1})")
            ids = list(given)
            if len(ids) > limit and truncate:
                return ids[:limit]
        if len(ids) > limit:
            raise self._too_long(param, len(ids))
        return ids
