"""What lies behind mlx-lm's ``TokenizerWrapper``: the transformers tokenizer it wraps, and its own chat renderer."""

from __future__ import annotations

from typing import Any

__all__ = ["chat_renderer", "set_chat_template", "wrapped_tokenizer"]


def wrapped_tokenizer(wrapper: Any, default: Any = None) -> Any:
    """The transformers tokenizer inside ``wrapper``; ``default`` where ``wrapper`` is not a ``TokenizerWrapper``."""
    return getattr(wrapper, "_tokenizer", default)


def chat_renderer(wrapper: Any) -> Any:
    """mlx-lm's Python chat renderer for the model (used instead of a Jinja template), or None."""
    return getattr(wrapper, "_chat_template", None)


def set_chat_template(wrapper: Any, template: str) -> None:
    """Render chats with ``template`` instead of the tokenizer's own (mlx-lm reads it from the transformers tokenizer)."""
    wrapper._tokenizer.chat_template = template  # noqa: SLF001
    wrapper.has_chat_template = True
