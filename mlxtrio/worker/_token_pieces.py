"""Tokens as log probabilities report them: each token's text and its own bytes.

A token of a byte-level or byte-fallback vocabulary may hold part of a
character; decoded alone it reads U+FFFD, so its text cannot rebuild what
was generated, nor tell two such tokens apart. Its bytes can: they are read
from the vocabulary as the model's streaming detokenizer reads them
(``_mlx_lm.token_bytes``), so a sequence's tokens' bytes join into the UTF-8
of the text it sends, and its text is those bytes decoded.
"""

from __future__ import annotations

from typing import Any

from .._protocol import TokenLogprob
from ._mlx_lm import token_bytes

__all__ = ["TokenPieces"]


class TokenPieces:
    """One model's tokens' texts and bytes, read once each (a worker serves one model)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._bytes, self.trims_first_space = token_bytes(tokenizer)
        self._known: dict[int, tuple[str, bytes]] = {}

    def piece(self, token: int) -> tuple[str, bytes]:
        """``token``'s text and bytes."""
        known = self._known.get(token)
        if known is None:
            if self._bytes is not None:
                data = self._bytes(token)
                known = data.decode("utf-8", errors="replace"), data
            else:
                # A tokenizer decoded whole texts at a time: its tokens' text is all there is to go by.
                text = self._tokenizer.decode([token])
                known = text, text.encode()
            self._known[token] = known
        return known

    def logprob(self, token: int, logprob: float | None, top: tuple[TokenLogprob, ...] = (), *, first: bool = False) -> TokenLogprob:
        """``token``'s entry; ``first``: a sequence's first generated token, whose leading space the
        detokenizer may drop from the text (then from its bytes too, which rebuild that text)."""
        text, data = self.piece(token)
        if first and self.trims_first_space and data.startswith(b" "):
            data = data[1:]
            text = data.decode("utf-8", errors="replace")
        return TokenLogprob(text, logprob, top, data, token)
