"""Inputs cut into forward passes: sorted by length, each pass as many tokens as the model runs in a few seconds.

Inputs of similar length go together, so that little of a pass is padding;
an input longer than a pass may hold has a pass to itself.

How many tokens a pass may hold (padding included) is ``PassSize``: at most
``MLX_EMBED_BATCH_TOKENS``, and no more than the model ran in about
``seconds`` on its last pass. A large model on a slow machine (a big
decoder on a small Mac, bfloat16 on a CPU) can take longer than the hang
timeout over one pass of the full size, and a worker that says nothing for
that long is killed as hung: its passes shrink to what it can do in a few
seconds instead, with a progress message after each. A fresh model's first
pass is small, since nothing is known of its speed yet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs

__all__ = ["Item", "PassSize", "next_pass", "plan"]

# A fresh model's first pass, in tokens: small enough for the slowest machine to finish well inside the hang timeout.
_FIRST_PASS_TOKENS = 256


@attrs.frozen
class Item:
    """One input of a request, tokenized."""

    request_id: int
    index: int
    ids: list[int]


@attrs.define
class PassSize:
    """The tokens of the next pass: at most ``limit``, about ``seconds`` of work at the speed last measured."""

    limit: int
    seconds: float
    tokens: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.tokens = min(self.limit, _FIRST_PASS_TOKENS)

    def measured(self, tokens: int, seconds: float) -> None:
        """A pass of ``tokens`` (padding included) took ``seconds``."""
        fitting = self.limit if seconds <= 0 else int(tokens * self.seconds / seconds)
        self.tokens = max(1, min(self.limit, fitting))


def next_pass(planned: deque[Item], batch_tokens: int) -> list[Item]:
    """The next pass off ``planned`` (sorted, shortest first): its first input, and those after it that keep the
    pass within ``batch_tokens`` once padded to its longest."""
    taken: list[Item] = []
    # Sorted: the next input is the pass's longest, so the pass pads every input to it.
    while planned and (not taken or (len(taken) + 1) * len(planned[0].ids) <= batch_tokens):
        taken.append(planned.popleft())
    return taken


def plan(items: Iterable[Item]) -> deque[Item]:
    """``items`` in the order passes take them: shortest first, so that each pass's inputs are of similar length."""
    return deque(sorted(items, key=lambda item: len(item.ids)))
