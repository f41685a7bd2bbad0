"""mlx-lm's prompt cache, with its lookup linear in the length of what it finds.

``LRUPromptCache.fetch_nearest_cache`` asks its trie for the shortest cached
sequence that extends the prompt (a prompt sent again, or one that is a
prefix of a longer cached conversation). mlx-lm's ``PromptTrie.search``
walks the trie below the prompt depth-first and copies the path so far at
every edge (``extra + [tok]``), so that lookup costs the square of the
extension's length, on the worker's one thread, where every decoding
sequence waits for it (docs/PERFORMANCE.md). Upstream knows it
(ml-explore/mlx-lm#1607); the pinned release has the quadratic search.

``PromptTrie`` here walks the same nodes in the same order with the same
pruning, and keeps each path as a link to its parent instead of a copy, so
it returns exactly what mlx-lm's would (tests/worker/test_prompt_cache.py
holds the two to each other on generated tries) in time linear in the nodes
it visits.

What it finds, ``fetch_nearest_cache`` hands out as a copy (the request
trims and extends its own), made with ``copy.deepcopy``. MLX arrays are
values, and copying one only makes a new handle on the same data, so the
cost is deepcopy's generic walk of the cache objects, the largest part of
an admission on a fast host. ``copy_cache`` walks them directly: a new
object of each cache class with its attributes copied the same way, a new
handle for each array, and deepcopy itself for anything else. Everything
else is mlx-lm's.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import mlx.core as mx
from mlx_lm.models import cache as mlx_cache

__all__ = ["PromptCache", "PromptTrie", "copy_cache"]

_ATOMS = (int, float, bool, str, bytes, type(None))


def copy_cache(cache: list[Any]) -> list[Any]:
    """What ``copy.deepcopy(cache)`` gives for mlx-lm's caches, without deepcopy's generic walk."""
    memo: dict[int, Any] = {}
    return [_copy(layer, memo) for layer in cache]


def _copy(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMS:
        return value
    # As deepcopy does: what is shared inside the cache stays shared in the copy.
    done = memo.get(id(value))
    if done is not None:
        return done
    if kind is mx.array:
        # A new handle on the same data: writing into either (``a[i] = x``) leaves the other as it was.
        new: Any = value.__copy__()
    elif kind is list:
        new = [_copy(item, memo) for item in value]
    elif kind is tuple:
        new = tuple(_copy(item, memo) for item in value)
    elif kind is dict:
        new = {key: _copy(item, memo) for key, item in value.items()}
    elif _plain(kind):
        new = object.__new__(kind)
        memo[id(value)] = new
        new.__dict__.update({key: _copy(item, memo) for key, item in vars(value).items()})
        return new
    else:
        new = copy.deepcopy(value, memo)
    memo[id(value)] = new
    return new


@functools.cache
def _plain(kind: type) -> bool:
    """One of mlx-lm's classes whose instances are their ``__dict__``: no slots, no copy or pickling hooks."""
    return kind.__module__.startswith("mlx_lm.") and not any(
        name in vars(klass)
        for klass in kind.__mro__[:-1]
        for name in ("__slots__", "__copy__", "__deepcopy__", "__reduce__", "__reduce_ex__", "__getstate__", "__setstate__")
    )


class PromptTrie(mlx_cache.PromptTrie):
    def search(self, model: Any, tokens: list[int]) -> mlx_cache.PromptTrieResult:
        if model not in self._trie:
            return mlx_cache.PromptTrieResult(model, None, None, None, 0)
        current = self._trie[model]
        if not tokens and "__value__" in current:
            return mlx_cache.PromptTrieResult(model, [], None, None, 0)

        # Walk the tokens as far as the trie goes, noting the last node with a value.
        last_index = -1
        index = 0
        while index < len(tokens) and tokens[index] in current:
            current = current[tokens[index]]
            if "__value__" in current:
                last_index = index
            index += 1
        if last_index == len(tokens) - 1 >= 0:
            return mlx_cache.PromptTrieResult(model, tokens, None, None, 0)
        shorter = tokens[: last_index + 1] if last_index > 0 else None

        longer = None
        if index > 0:
            # mlx-lm's depth-first search for the nearest value below, a path
            # being (token, parent's path) and its length carried beside it.
            best: tuple[int, Any] | None = None
            best_length = 0
            stack: list[tuple[dict, tuple[int, Any] | None, int]] = [(current, None, 0)]
            found = False
            while stack:
                node, path, length = stack.pop()
                if "__value__" in node:
                    if not found or length < best_length:
                        best, best_length, found = path, length, True
                elif not found or length < best_length:
                    for token in node:
                        stack.append((node[token], (token, path), length + 1))
            extra: list[int] = []
            while best is not None:
                extra.append(best[0])
                best = best[1]
            extra.reverse()
            # Not found only in a trie with a node that leads to no value, where mlx-lm's would raise.
            longer = tokens[:index] + extra if found else None
        return mlx_cache.PromptTrieResult(model, None, shorter, longer, index)


class PromptCache(mlx_cache.LRUPromptCache):
    """``LRUPromptCache`` on the ``PromptTrie`` above, handing out copies made by ``copy_cache``."""

    def __init__(self, max_size: int = 10, max_bytes: int = 1 << 63) -> None:
        super().__init__(max_size=max_size, max_bytes=max_bytes)
        self._trie = PromptTrie()

    def fetch_nearest_cache(self, model: Any, tokens: list[int]) -> tuple[list[Any] | None, list[int]]:
        # mlx-lm's own, with copy_cache for copy.deepcopy.
        result = self._trie.search(model, tokens)
        if result.exact is not None:
            return copy_cache(self._trie.get(result.model, result.exact).prompt_cache), []
        short_length = len(result.shorter) if result.shorter is not None else 0
        if result.longer is not None and result.common_prefix > short_length:
            entry = self._trie.get(result.model, result.longer)
            if mlx_cache.can_trim_prompt_cache(entry.prompt_cache):
                cache = copy_cache(entry.prompt_cache)
                prefix = min(len(tokens) - 1, result.common_prefix)
                mlx_cache.trim_prompt_cache(cache, len(result.longer) - prefix)
                return cache, tokens[prefix:]
        if short_length > 0:
            return copy_cache(self._trie.get(result.model, result.shorter).prompt_cache), tokens[short_length:]
        return None, tokens
