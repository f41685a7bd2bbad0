"""Prompts with images on their way into KV caches, a chunk per engine step, so that the batch decodes between chunks."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import attrs

from ..._protocol import Generate
from ._prompt import VisionTokens

__all__ = ["Prefilled", "VisionPrefills", "ready_choices"]


@attrs.frozen
class Prefilled:
    """A choice of a request whose prompt is in its cache, all but the last token: ready to start."""

    request: Generate
    prompt: VisionTokens
    cache: list[Any]
    # How many of the prompt's tokens the cache holds, and how many of those came from the prompt cache.
    held: int
    hit: int


@attrs.define(eq=False)
class _Prefill:
    # The request's choices: they share the prompt, and one prefill.
    choices: list[Generate]
    prompt: VisionTokens
    cache: list[Any]
    hit: int
    chunks: Iterator[None]


class VisionPrefills:
    """The queue of image prompts being prefilled, first come first served, one chunk per ``step``."""

    def __init__(self) -> None:
        self._queue: list[_Prefill] = []

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, choices: list[Generate], prompt: VisionTokens, cache: list[Any], hit: int, chunks: Iterator[None]) -> None:
        self._queue.append(_Prefill(choices, prompt, cache, hit, chunks))

    def cancel(self, request_id: int) -> bool:
        """Drop one choice; its prefill goes on for the others, or stops with the last."""
        for prefill in self._queue:
            if any(choice.request_id == request_id for choice in prefill.choices):
                prefill.choices = [choice for choice in prefill.choices if choice.request_id != request_id]
                if not prefill.choices:
                    self._queue.remove(prefill)
                return True
        return False

    def clear(self) -> None:
        self._queue.clear()

    def step(self) -> tuple[list[Prefilled], tuple[list[int], Exception] | None]:
        """One chunk of the first prompt's prefill. Returns its choices, each with a cache of its own, once the
        last chunk is done; or, where the chunk failed, its choices' ids and the exception (it leaves the queue)."""
        prefill = self._queue[0]
        try:
            next(prefill.chunks)
        except StopIteration:
            pass
        except Exception as exc:  # noqa: BLE001 - this prompt's failure: its choices fail, the batch goes on
            self._queue.pop(0)
            return [], ([choice.request_id for choice in prefill.choices], exc)
        else:
            return [], None
        self._queue.pop(0)
        return ready_choices(prefill.choices, prefill.prompt, prefill.cache, len(prefill.prompt) - 1, prefill.hit), None


def ready_choices(choices: list[Generate], prompt: VisionTokens, cache: list[Any], held: int, hit: int) -> list[Prefilled]:
    """Each choice with a cache of its own: the first takes ``cache``, each further one samples on from a copy."""
    first, *others = choices
    return [Prefilled(first, prompt, cache, held, hit), *(Prefilled(choice, prompt, copy.deepcopy(cache), held, hit) for choice in others)]
