"""Inputs cut into forward passes: sorted by length, at most ``batch_tokens`` tokens a pass, padding included.

Inputs of similar length go together, so that little of a pass is padding;
an input longer than ``batch_tokens`` has a pass to itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = ["Item", "plan_passes"]


@attrs.frozen
class Item:
    """One input of a request, tokenized."""

    request_id: int
    index: int
    ids: list[int]


def plan_passes(items: Iterable[Item], batch_tokens: int) -> list[list[Item]]:
    """``items`` in passes of at most ``batch_tokens`` tokens each once padded to the pass's longest, shortest first."""
    passes: list[list[Item]] = []
    current: list[Item] = []
    for item in sorted(items, key=lambda item: len(item.ids)):
        # Sorted: this input is the pass's longest, so the pass pads every input to it.
        if current and (len(current) + 1) * len(item.ids) > batch_tokens:
            passes.append(current)
            current = []
        current.append(item)
    if current:
        passes.append(current)
    return passes
