"""The model's thinking in the output: split from its text by the tokenizer's think markers.

mlx-lm knows a model's markers (``TokenizerWrapper.think_start`` and
``think_end``: ``<think>`` and ``</think>`` for most); some are several
tokens, so, as tool calls are (``_tools.py``), they are found in the text the
detokenizer releases, and a tail that could be the start of one is held
back. What lies between them is reasoning; the markers are neither. A
sequence whose prompt ends inside a think block (the template opened it)
starts in reasoning. Stop strings and tool calls are looked for in the text
only: reasoning is the model's scratch space, not its answer.
"""

from __future__ import annotations

from ._tools import partial_suffix

__all__ = ["ReasoningSplitter"]


class ReasoningSplitter:
    """Splits one sequence's released text into reasoning and text."""

    def __init__(self, start: str, end: str, *, inside: bool) -> None:
        self._markers = (start, end)
        self._inside = inside
        self._pending = ""
        # Right after a marker: the whitespace models put there belongs to neither part.
        self._after_marker = False

    @property
    def inside(self) -> bool:
        """Whether the text so far has left the sequence inside a think block."""
        return self._inside

    def feed(self, text: str, *, final: bool) -> tuple[str, str]:
        """(reasoning, text) released by ``text``; ``final``: nothing follows, so nothing is held back."""
        parts: tuple[list[str], list[str]] = ([], [])
        pending = self._pending + text
        while True:
            marker = self._markers[self._inside]
            at = pending.find(marker)
            cut = at if at >= 0 else len(pending) - (0 if final else partial_suffix(pending, marker))
            piece = pending[:cut]
            if self._after_marker:
                piece = piece.lstrip()
                self._after_marker = not piece and at < 0
            # parts[0]: reasoning (inside), parts[1]: text.
            parts[not self._inside].append(piece)
            if at < 0:
                pending = pending[cut:]
                break
            pending = pending[at + len(marker) :]
            self._inside = not self._inside
            self._after_marker = True
        self._pending = pending
        return "".join(parts[0]), "".join(parts[1])
