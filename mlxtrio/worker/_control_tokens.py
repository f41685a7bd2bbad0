"""Client text that spells the chat template's control tokens is encoded as text, never as those tokens.

A chat template writes control tokens (``<|im_start|>``, ``<|eot_id|>``, the
demo's ``<|end|>``) around the messages, and the rendered text is tokenized
as a whole, so a message whose text spells one became that token: a client
could close its own turn and open a system one.

transformers' ``apply_chat_template(..., sanitize_control_tokens=True)``
marks the control tokens in the inputs' strings with private-use markers,
renders, and encodes what it marked as text. The idea is kept; its encoding
does not fit the worker: it takes the rendering through transformers'
layers only, off the direct path (``_tokenize.py``); it encodes the rendered
text piece by piece around each marked token, a transformers call for each
piece, so a prompt of many of them holds the worker's thread, and every
stream on it, that much longer; and it leaves dict keys (a tool's parameter
names, a call's argument names) unmarked, so they still inject.

So here: the request's strings (message text, tool calls' names, ids and
arguments, tools, keys included) are searched for control tokens. A request
with none is rendered and encoded exactly as before, so its ids, and the
prompt cache's prefixes, do not change. One with some is rendered with each
of them wrapped in private-use markers, and the rendered text is encoded in
one call of a second tokenizer that shares the first's model and pipeline:
in it every control token is special and special tokens are text, and each
control token the template wrote (one not marked) is replaced by a
placeholder, an added token that stands for it. The template's tokens keep
their ids and places, so the text around them is split as before, and the
client's text is encoded as the vocabulary encodes it as plain text. A
tokenizer without a stock backend takes transformers' way, and what that
cannot encode as text (keys; mlx-lm's Python templates, which it does not
render) is refused.

Like transformers', this sees only what a template passes through: a
template that builds a control token out of a client's string (the demo's
``'<|' + role + '|>'``) needs that string validated, as roles are, and a
token that a client's string forms only with the template's text next to it
is not seen.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from ._mlx_lm import apply_chat_template, chat_renderer

__all__ = ["ControlTokens"]

# Private-use characters, stripped from the client's strings before marking so that they cannot forge a mark.
_OPEN = "\U000f0000"
_CLOSE = "\U000f0001"
# The markers as JSON escapes them with ensure_ascii (Python's json.dumps by default): a template that writes
# a client's string that way hides the marks, and its control tokens would pass for the template's.
_ESCAPED = re.compile(r"\\udb80\\udc0[01]", re.IGNORECASE)


def _placeholder(index: int) -> str:
    # Markers appear in the text given to the second tokenizer only where a placeholder is written.
    return f"{_OPEN}{chr(0xF0100 + index)}{_CLOSE}"


def _pattern(words: list[str]) -> str:
    """A regex for any of ``words``, longest first, as a trie: one step per character whatever their number
    (an alternation of Llama 3's 256 tokens tries each at every ``<``)."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = None

    def branch(node: dict[str, Any]) -> str:
        ways = [re.escape(char) + branch(child) for char, child in node.items() if char]
        if not ways:
            return ""
        body = ways[0] if len(ways) == 1 else f"(?:{'|'.join(ways)})"
        return f"(?:{body})?" if "" in node else body

    return branch(root)


def _template_sources(wrapper: Any, hf: Any) -> list[str]:
    """The text of the model's chat templates: Jinja, or the source of mlx-lm's Python renderer."""
    sources: list[str] = []
    template = getattr(hf, "chat_template", None)
    if isinstance(template, str):
        sources.append(template)
    elif isinstance(template, dict):
        sources.extend(value for value in template.values() if isinstance(value, str))
    renderer = chat_renderer(wrapper)
    if renderer is not None:
        try:
            sources.append(inspect.getsource(inspect.getmodule(renderer)))
        except (OSError, TypeError):
            pass
    return sources


def _control_tokens(wrapper: Any, hf: Any) -> dict[int, Any]:
    """transformers' control tokens: the special added tokens, those the tokenizer lists as
    ``chat_control_tokens``, and the added tokens the chat template writes (whitespace aside)."""
    listed = set(getattr(hf, "chat_control_tokens", None) or ())
    sources = _template_sources(wrapper, hf)
    return {
        index: token
        for index, token in getattr(hf, "added_tokens_decoder", {}).items()
        if token.special
        or token.content in listed
        or (token.content.strip() and any(token.content in source for source in sources))
    }


class ControlTokens:
    """Finds a tokenizer's control tokens in a request's strings, and encodes a chat that has some."""

    def __init__(self, wrapper: Any, hf: Any, backend: Any) -> None:
        # ``backend``: the tokenizers.Tokenizer behind a stock transformers tokenizer, or None.
        self._wrapper = wrapper
        self._hf = hf
        tokens = _control_tokens(wrapper, hf)
        words = sorted({token.content for token in tokens.values()})
        self._find = re.compile(_pattern(words)) if words else None
        trie = _pattern(words) if words else "(?!)"
        self._rendered = re.compile(f"{_OPEN}({trie}){_CLOSE}|({trie})|[{_OPEN}{_CLOSE}]")
        self._second: Any = None
        self._placeholders: dict[str, str] = {}
        self._ids: dict[int, int] = {}
        if backend is not None and words:
            self._second_tokenizer(backend, tokens)

    def _second_tokenizer(self, backend: Any, tokens: dict[int, Any]) -> None:
        """The backend's model and pipeline (shared, not copied) with control tokens special, and placeholders."""
        from tokenizers import AddedToken, Tokenizer

        second = Tokenizer(backend.model)
        second.normalizer = backend.normalizer
        second.pre_tokenizer = backend.pre_tokenizer
        added = backend.get_added_tokens_decoder()

        def like(token: Any, content: str, *, special: bool, normalized: bool) -> Any:
            return AddedToken(
                content,
                special=special,
                normalized=normalized,
                lstrip=token.lstrip,
                rstrip=token.rstrip,
                single_word=token.single_word,
            )

        second.add_tokens(
            [like(token, token.content, special=token.special or i in tokens, normalized=token.normalized) for i, token in sorted(added.items())]
        )
        if any(second.token_to_id(token.content) != i for i, token in added.items()):
            return  # ids not reproduced: transformers' own path instead
        placeholders = {token.content: _placeholder(n) for n, token in enumerate(tokens.values())}
        # Not normalized: found in the text as written, where the template wrote it.
        second.add_tokens([like(token, placeholders[token.content], special=False, normalized=False) for token in tokens.values()])
        second.encode_special_tokens = True
        self._ids = {second.token_to_id(placeholders[token.content]): i for i, token in tokens.items()}
        self._placeholders = placeholders
        self._second = second

    def present(self, value: Any) -> bool:
        """Whether any string in ``value`` (strings, lists, dicts' keys and values) holds a control token."""
        if isinstance(value, str):
            return self._find is not None and self._find.search(value) is not None
        if isinstance(value, dict):
            return any(self.present(key) or self.present(item) for key, item in value.items())
        if isinstance(value, (list, tuple)):
            return any(self.present(item) for item in value)
        return False

    def _mark(self, value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(_OPEN, "").replace(_CLOSE, "")
            return self._find.sub(lambda found: f"{_OPEN}{found.group()}{_CLOSE}", value) if self._find else value
        if isinstance(value, dict):
            return {self._mark(key): self._mark(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._mark(item) for item in value]
        return value

    def chat(self, messages: list[dict], template: dict[str, Any], *, fits: Callable[[str], None] | None = None) -> list[int]:
        """The chat template's rendering (with a generation prompt) as ids, the control tokens in
        ``messages`` and ``template``'s values (tools) encoded as text; ``fits``, if given, checks the text
        to encode before it is encoded (raising if it is too long)."""
        if self._second is None:
            return self._transformers(messages, template)
        text = apply_chat_template(
            self._wrapper, self._mark(messages), add_generation_prompt=True, tokenize=False, **self._mark(template)
        )
        if _ESCAPED.search(text):
            raise ValueError("the chat template escapes the request's text, so the control tokens it spells cannot be told apart")
        placeholders = self._placeholders

        def replace(found: re.Match) -> str:
            marked, written = found.groups()
            if marked is not None:
                return marked
            return placeholders[written] if written is not None else ""  # a lone marker: a template cut a mark

        text = self._rendered.sub(replace, text)
        if fits is not None:
            fits(text)
        ids = self._second.encode_batch_fast([text], add_special_tokens=False)[0].ids
        mapped = self._ids
        return [mapped.get(token, token) for token in ids]

    def _in_keys(self, value: Any) -> bool:
        if isinstance(value, dict):
            return any(self.present(key) or self._in_keys(item) for key, item in value.items())
        if isinstance(value, (list, tuple)):
            return any(self._in_keys(item) for item in value)
        return False

    def _transformers(self, messages: list[dict], template: dict[str, Any]) -> list[int]:
        """transformers' sanitize_control_tokens, for a tokenizer with no stock backend; refused where it
        cannot encode the control tokens as text: mlx-lm's Python templates, dict keys, older transformers."""
        hf = self._hf
        supported = "sanitize_control_tokens" in inspect.signature(type(hf).apply_chat_template).parameters
        python_template = chat_renderer(self._wrapper) is not None
        if not supported or python_template or self._in_keys(messages) or self._in_keys(template):
            raise ValueError("the request spells the model's control tokens where its tokenizer cannot encode them as text")
        return list(apply_chat_template(self._wrapper, messages, add_generation_prompt=True, sanitize_control_tokens=True, **template))
