"""Grammar-constrained decoding: a logits processor that allows only tokens the regex can still match.

outlines-core compiles a regex (the orchestrator turns a JSON schema into one)
against the model's vocabulary into an index of states and allowed tokens;
each sequence walks it with a Guide of its own. The processor is an ordinary
mlx-lm logits processor, so it works on both engines and inside a batch: each
sequence has its own processors.

The vocabulary must be each token's exact bytes: byte-level BPE tokens are
written in GPT-2's printable alphabet, SentencePiece ones with ``▁`` for a
space and ``<0xNN>`` for raw bytes.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import mlx.core as mx
import numpy as np
from outlines_core import Guide, Index, Vocabulary

__all__ = ["GrammarCompiler"]

# Compiled indexes kept per worker: the same schema is usually asked for again.
_INDEX_CACHE_SIZE = 32


@functools.cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, backwards: each printable stand-in to the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = dict(zip(printable, printable))
    extra = 0
    for byte in range(256):
        if byte not in stand_ins:
            stand_ins[byte] = 256 + extra
            extra += 1
    return {chr(stand_in): byte for byte, stand_in in stand_ins.items()}


def _token_bytes(token: str, byte_level: bool) -> bytes:
    if byte_level:
        decoder = byte_decoder()
        if all(char in decoder for char in token):
            return bytes(decoder[char] for char in token)
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode()


class GrammarCompiler:
    """One per worker: the model's vocabulary for outlines-core, and an LRU of compiled regexes."""

    def __init__(self, tokenizer: Any, eos_token_id: int) -> None:
        self._tokenizer = tokenizer
        self._eos = eos_token_id
        self._vocabulary: Vocabulary | None = None
        self._indexes: OrderedDict[str, Index] = OrderedDict()

    def _vocab(self) -> Vocabulary:
        if self._vocabulary is None:
            hf = getattr(self._tokenizer, "_tokenizer", self._tokenizer)
            special = set(getattr(hf, "all_special_ids", ()))
            vocabulary = hf.get_vocab()
            # Byte-level when the tokens are written in GPT-2's alphabet ("Ġ" for a space).
            decoder = byte_decoder()
            byte_level = sum(all(char in decoder for char in token) for token in vocabulary) > 0.9 * len(vocabulary)
            tokens: dict[bytes, list[int]] = {}
            for token, token_id in vocabulary.items():
                if token_id in special or token_id == self._eos:
                    continue
                tokens.setdefault(_token_bytes(token, byte_level), []).append(token_id)
            tokens.pop(b"", None)
            self._vocabulary = Vocabulary(self._eos, tokens)
        return self._vocabulary

    def index(self, regex: str) -> Index:
        index = self._indexes.get(regex)
        if index is None:
            index = Index(regex, self._vocab())
            self._indexes[regex] = index
            while len(self._indexes) > _INDEX_CACHE_SIZE:
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(regex)
        return index

    def processor(self, regex: str) -> GrammarProcessor:
        return GrammarProcessor(Guide(self.index(regex)), self._eos)


class GrammarProcessor:
    """mlx-lm logits processor: ``(tokens so far, logits) -> logits`` with disallowed tokens at -inf."""

    def __init__(self, guide: Guide, eos_token_id: int) -> None:
        self._guide = guide
        self._eos = eos_token_id
        self._seen: int | None = None
        self._mask: np.ndarray | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        seen = tokens.size
        if self._seen is not None and seen > self._seen:
            # The tokens sampled since the last call (one, normally) move the guide on.
            for token in tokens[self._seen :].tolist():
                # The end token ends the sequence; a pipelined engine may still
                # ask once more before it sees that. The guide has nowhere to go.
                if token != self._eos:
                    self._guide.advance(int(token))
        self._seen = seen
        width = logits.shape[-1]
        if self._mask is None:
            self._mask = np.zeros((1, (width + 31) // 32), dtype=np.int32)
        mask = self._mask
        mask.fill(0)
        self._guide.write_mask_into(mask.ctypes.data, mask.size, mask.itemsize)
        allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[:width].astype(bool)
        return mx.where(mx.array(allowed), logits, -mx.inf)
