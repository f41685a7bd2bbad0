"""What lies behind mlx-lm's ``TokenizerWrapper``: the transformers tokenizer it wraps, its own chat renderer, its detokenizer's token map."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer, _byte_decoder

__all__ = ["apply_chat_template", "chat_renderer", "detokenizer", "opens_thinking", "set_chat_template", "token_bytes", "wrapped_tokenizer"]

# The last prompt tokens searched for a think block the prompt leaves open: the template writes its
# opener in the generation prompt, and a search through a whole long prompt would hold the worker's thread.
_THINK_TAIL = 64


class _SpacedBPEDetokenizer(BPEStreamingDetokenizer):
    """mlx-lm's byte-level detokenizer, keeping the leading space of a sequence's first token.

    In a byte-level vocabulary the space is part of the token (" Paris"
    after "The capital is"); dropping it loses text a completion needs, and
    transformers' ``decode`` (what vLLM's and llama.cpp's servers send) keeps it.
    """

    def _maybe_trim_space(self, current_text: str) -> str:
        return current_text


def detokenizer(wrapper: Any) -> Any:
    """A fresh streaming detokenizer for one sequence (a reset copy of the wrapper's own)."""
    fresh = wrapper.detokenizer
    if type(fresh) is BPEStreamingDetokenizer:
        fresh.__class__ = _SpacedBPEDetokenizer
    return fresh


def wrapped_tokenizer(wrapper: Any, default: Any = None) -> Any:
    """The transformers tokenizer inside ``wrapper``; ``default`` where ``wrapper`` is not a ``TokenizerWrapper``."""
    return getattr(wrapper, "_tokenizer", default)


def chat_renderer(wrapper: Any) -> Any:
    """mlx-lm's Python chat renderer for the model (used instead of a Jinja template), or None."""
    return getattr(wrapper, "_chat_template", None)


def apply_chat_template(wrapper: Any, messages: list[dict], **kwargs: Any) -> Any:
    """``wrapper.apply_chat_template``, except that without ``enable_thinking`` the template's own default
    holds: mlx-lm's wrapper would set it, on wherever the model has think markers."""
    if "enable_thinking" in kwargs or not hasattr(wrapper, "_thinking_kwarg"):
        return wrapper.apply_chat_template(messages, **kwargs)
    tokenize = kwargs.pop("tokenize", True)
    hf = wrapped_tokenizer(wrapper)
    renderer = chat_renderer(wrapper)
    if renderer is None:
        return hf.apply_chat_template(messages, tokenize=tokenize, return_dict=False, **kwargs)
    text = renderer(messages, **kwargs)
    return hf.encode(text, add_special_tokens=False) if tokenize else text


def opens_thinking(wrapper: Any, prompt: list[int]) -> bool:
    """Whether ``prompt`` ends inside a think block (its template opened one for the model to go on with)."""
    if getattr(wrapper, "think_start", None) is None:
        return False
    start = max(0, len(prompt) - _THINK_TAIL)
    return wrapper.rfind_think_start(prompt, start=start) > wrapper.rfind_think_end(prompt, start=start)


def set_chat_template(wrapper: Any, template: str) -> None:
    """Render chats with ``template`` instead of the tokenizer's own (mlx-lm reads it from the transformers tokenizer)."""
    wrapper._tokenizer.chat_template = template  # noqa: SLF001
    wrapper.has_chat_template = True


def token_bytes(wrapper: Any) -> tuple[Callable[[int], bytes] | None, bool]:
    """How the model's streaming detokenizer reads one token as bytes (None: it decodes whole texts, not
    token by token), and whether it drops the leading space of a sequence's first text (``detokenizer``'s do
    so only in a SentencePiece vocabulary, where the space marks a word's start, as transformers' decode does).

    Read as the detokenizer reads them (byte 0 included, which mlx-lm's byte-level
    detokenizer takes for its character), a sequence's tokens' bytes rebuild the text it sends.
    """
    detokenizer = getattr(wrapper, "_detokenizer", None)
    if isinstance(detokenizer, BPEStreamingDetokenizer):
        tokenmap, byte_decoder = detokenizer.tokenmap, _byte_decoder()

        def byte_level(token: int) -> bytes:
            piece = tokenmap[token] if token < len(tokenmap) else "!"
            return b"".join(bytes([byte_decoder[c]]) if byte_decoder.get(c) else c.encode() for c in piece)

        return byte_level, False
    if isinstance(detokenizer, SPMStreamingDetokenizer):
        pieces, separator = detokenizer.tokenmap, SPMStreamingDetokenizer._sep  # noqa: SLF001

        def sentencepiece(token: int) -> bytes:
            return pieces[token].replace(separator, b" ")

        return sentencepiece, detokenizer.trim_space
    return None, False
