"""Prompts to tokens, straight through the tokenizer's Rust backend where that gives the same ids.

Every admission tokenizes its prompt on the worker's only thread, so its
cost is paid by every sequence decoding at the time, and in a burst the last
request waits for all the admissions before it. transformers wraps the
``tokenizers`` backend in several layers (argument checks, a batch encoding
object, offsets, attention masks), and for a chat request it renders the
template and encodes the text through all of them, which costs more than
rendering and encoding together (docs/PERFORMANCE.md).

So the template is rendered to text, as mlx-lm's own chat-template path does
(``TokenizerWrapper.apply_chat_template``), and the text goes to the backend
directly, with what transformers would pass it: no special tokens added for
a chat prompt, the caller's choice for a plain one. transformers also sets
the backend's truncation, padding and special-token splitting on each call;
where the backend's state is not what it would set (a tokenizer.json that
truncates, a tokenizer that splits special tokens), the tokenizer's own path
is taken for that prompt. It is taken always where there is no such backend
(a slow tokenizer, transformers before 5), or where the tokenizer's class
changes how text is encoded (mlx-lm's ``NewlineTokenizer`` rewrites the
text in ``encode``; CodeLlama's tokenizer has its own ``encode`` too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._control_tokens import ControlTokens
from ._mlx_lm import apply_chat_template, wrapped_tokenizer
from ._prompt_bound import PromptTooLong, chars_per_token

__all__ = ["PromptEncoder"]

# What transformers' TokenizersBackend runs from a call to the backend; a class that overrides any of it encodes its own way.
_PIPELINE = ("__call__", "_call_one", "encode", "encode_plus", "_encode_plus")


def _stock_pipeline(hf: Any) -> bool:
    """Whether ``hf`` encodes text as transformers' TokenizersBackend does, by the backend alone."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # transformers before 5: its fast tokenizers are another class
        return False
    if not isinstance(hf, TokenizersBackend):
        return False
    return all(getattr(type(hf), name, None) is getattr(TokenizersBackend, name, None) for name in _PIPELINE)


class PromptEncoder:
    """Token ids for chat messages and for plain prompts, as the tokenizer's own calls give them."""

    def __init__(self, tokenizer: Any) -> None:
        # mlx-lm's TokenizerWrapper around a transformers tokenizer around a tokenizers.Tokenizer.
        self._tokenizer = tokenizer
        hf = wrapped_tokenizer(tokenizer)
        backend = getattr(hf, "_tokenizer", None)
        fast = getattr(backend, "encode_batch_fast", None)
        self._hf = hf
        self._backend = backend
        self._fast: Callable[..., Any] | None = fast if callable(fast) and _stock_pipeline(hf) else None
        self._control = ControlTokens(tokenizer, hf, backend if self._fast is not None else None)
        # The most characters one token stands for on the direct path (_prompt_bound.py); None: no bound.
        self.chars_per_token = chars_per_token(backend) if self._fast is not None else None

    def _usable(self) -> bool:
        """Whether prompts go straight to the backend now: its state is what transformers would set."""
        backend = self._backend
        return (
            self._fast is not None
            and backend.truncation is None
            and backend.padding is None
            and backend.encode_special_tokens == bool(getattr(self._hf, "split_special_tokens", False))
        )

    def _fits(self, text: str, budget: int | None) -> None:
        """Raise PromptTooLong, before any tokenizing, if ``text`` has too many characters for ``budget`` tokens."""
        per_token = self.chars_per_token
        if budget is not None and per_token is not None and len(text) > per_token * max(budget, 0):
            raise PromptTooLong(len(text), -(-len(text) // per_token))

    def chat(self, messages: list[dict], *, budget: int | None = None, **template: Any) -> list[int]:
        """The chat template's rendering of ``messages`` (with a generation prompt), as ids.

        ``budget``: the most tokens the prompt may have, checked by its length before it is tokenized.
        Control tokens that the messages or the template's values (tools) spell are encoded as text
        (``_control_tokens.py``).
        """
        if self._control.present(messages) or self._control.present(template):
            return self._control.chat(messages, template, fits=lambda text: self._fits(text, budget))
        tokenizer = self._tokenizer
        if not self._usable():
            return list(apply_chat_template(tokenizer, messages, add_generation_prompt=True, **template))
        text = apply_chat_template(tokenizer, messages, add_generation_prompt=True, tokenize=False, **template)
        self._fits(text, budget)
        return self._fast([text], add_special_tokens=False)[0].ids

    def text(self, text: str, *, add_special_tokens: bool, budget: int | None = None) -> list[int]:
        """``text`` as ids, with the tokenizer's special tokens (a BOS) added or not; ``budget`` as for ``chat``."""
        if not self._usable():
            return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))
        self._fits(text, budget)
        return self._fast([text], add_special_tokens=add_special_tokens)[0].ids
