"""The most characters one token can stand for: a prompt that cannot fit the context is refused untokenized.

Tokenizing is the worker's work, on its only thread: a prompt of megabytes
takes seconds of it, and every sequence decoding at the time waits. Yet
how many tokens a text needs at the least follows from its length alone, for
most tokenizers: with ``L`` the longest token, in characters of the text it
is made of, a text of ``N`` characters needs at least ``N / L`` tokens when
its tokens spell the whole text out. So a prompt of more than
``L * (context - max_tokens)`` characters cannot fit, whatever it says, and
is refused before its tokenization begins.

That holds only where no step of the tokenizer can make the text shorter
than its tokens' spelling, which is not so of every tokenizer: a normalizer
may strip whitespace or accents (BERT's, SentencePiece's compiled maps), a
pre-tokenizer may drop whitespace (``Whitespace``), a model may put a run of
unknown characters, or a whole long word, into one unknown token (Unigram,
WordPiece, BPE with ``fuse_unk``), an added token with ``lstrip``/``rstrip``
swallows the whitespace beside it. So the tokenizer's description (its
``tokenizer.json``) is read once, at load, and a bound is given only when
every step is one that is known to keep the length:

- normalizers that map each character to one or more (NFD, NFKD, Lowercase,
  Prepend, ByteLevel), a ``Replace`` of a literal by a non-empty string
  (shrinking by at most their ratio), and NFC/NFKC, which compose at most 4
  characters into one (no character's canonical decomposition is longer:
  U+1FAF and its kin);
- pre-tokenizers that only split or mark (ByteLevel, Metaspace, Digits,
  UnicodeScripts, Split and Punctuation unless they remove what they match);
- BPE whose every character is in its vocabulary (the 256 of a byte-level
  alphabet), or that falls back to byte tokens, or that gives each unknown
  character an unknown token of its own; Unigram with byte fallback.

Anything else (or a tokenizer transformers encodes its own way) gets no
bound, and its prompts are tokenized to be counted, once per request.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["PromptTooLong", "chars_per_token"]

# No character's canonical decomposition has more than this many (Unicode 15: U+1F82, U+1FAF, ...),
# so NFC and NFKC, which compose what NFD and NFKD give, shorten a text at most this many times.
_LONGEST_DECOMPOSITION = 4
_NORMALIZERS_KEEPING = frozenset({"NFD", "NFKD", "Lowercase", "Prepend", "ByteLevel"})
_NORMALIZERS_COMPOSING = frozenset({"NFC", "NFKC"})
_PRE_TOKENIZERS_KEEPING = frozenset({"ByteLevel", "Metaspace", "Digits", "UnicodeScripts"})
_BYTE_TOKENS = tuple(f"<0x{byte:02X}>" for byte in range(256))


class PromptTooLong(Exception):
    """A prompt with more characters than any prompt that fits can have."""

    def __init__(self, characters: int, fewest_tokens: int) -> None:
        super().__init__(f"{characters} characters, so at least {fewest_tokens} tokens")
        self.fewest_tokens = fewest_tokens


def _shrink(normalizer: dict | None) -> int | None:
    """How many times shorter, at most, ``normalizer`` makes a text; None: it may drop anything."""
    if normalizer is None:
        return 1
    kind = normalizer.get("type")
    if kind in _NORMALIZERS_KEEPING:
        return 1
    if kind in _NORMALIZERS_COMPOSING:
        return _LONGEST_DECOMPOSITION
    if kind == "Replace":
        literal, content = (normalizer.get("pattern") or {}).get("String"), normalizer.get("content")
        if not literal or not content:
            return None
        return max(1, math.ceil(len(literal) / len(content)))
    if kind == "Sequence":
        total = 1
        for each in normalizer.get("normalizers") or ():
            factor = _shrink(each)
            if factor is None:
                return None
            total *= factor
        return total
    return None


def _keeps_text(pre_tokenizer: dict | None) -> bool:
    """Whether ``pre_tokenizer`` keeps every character of the text in some piece."""
    if pre_tokenizer is None:
        return True
    kind = pre_tokenizer.get("type")
    if kind in _PRE_TOKENIZERS_KEEPING:
        return True
    if kind in ("Split", "Punctuation"):
        return pre_tokenizer.get("behavior") != "Removed"
    if kind == "Sequence":
        return all(_keeps_text(each) for each in pre_tokenizer.get("pretokenizers") or ())
    return False


def _byte_level(spec: dict) -> bool:
    def has(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(value) for value in node.values())
        if isinstance(node, list):
            return any(has(value) for value in node)
        return False

    return has(spec.get("pre_tokenizer")) or has(spec.get("normalizer"))


def _longest_token(model: dict, *, byte_level: bool) -> int | None:
    """The longest token of a model that spells every character out; None for one that may not."""
    kind = model.get("type")
    if kind == "BPE":
        vocabulary = model.get("vocab") or {}
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            return None
        if model.get("byte_fallback") and all(token in vocabulary for token in _BYTE_TOKENS):
            pass
        elif byte_level and all(character in vocabulary for character in _byte_level_alphabet()):
            pass
        elif model.get("unk_token") not in vocabulary or model.get("fuse_unk"):
            # Unknown characters would be dropped, or a run of them would be one token.
            return None
        return max(map(len, vocabulary), default=1)
    if kind == "Unigram":
        pieces = [piece for piece, _score in model.get("vocab") or ()]
        if model.get("byte_fallback") and set(_BYTE_TOKENS) <= set(pieces):
            return max(map(len, pieces), default=1)
    return None


def _byte_level_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel.alphabet()


def chars_per_token(backend: Any) -> int | None:
    """The most characters of text one token of ``backend`` (a ``tokenizers.Tokenizer``) stands for; None: no bound."""
    try:
        spec = json.loads(backend.to_str())
    except Exception:  # noqa: BLE001 - a backend that cannot describe itself gets no bound
        return None
    added = spec.get("added_tokens") or []
    shrink = _shrink(spec.get("normalizer"))
    if (
        shrink is None
        or spec.get("truncation") is not None
        or not _keeps_text(spec.get("pre_tokenizer"))
        or any(token.get("lstrip") or token.get("rstrip") for token in added)
    ):
        return None
    longest = _longest_token(spec.get("model") or {}, byte_level=_byte_level(spec))
    if longest is None:
        return None
    return shrink * max(longest, *(len(token.get("content") or "") for token in added), 1)
