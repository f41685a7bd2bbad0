"""mlx-lm's prompt cache, with its lookup linear in the length of what it finds.

``LRUPromptCache.fetch_nearest_cache`` asks its trie for the shortest cached
sequence that extends the prompt (a prompt sent again, or one that is a
prefix of a longer cached conversation). mlx-lm's ``PromptTrie.search``
walks the trie below the prompt depth-first and copies the path so far at
every edge (``extra + [tok]``), so that lookup costs the square of the
extension's length, on the worker's one thread, where every decoding
sequence waits for it: in mlx-lm 0.32.2 a 100-token prompt below a cached
entry 1,000 tokens longer took 0.8 ms, 4,000 longer 11.8 ms and 16,000
longer 189 ms; this search takes 0.16, 0.78 and 3.7 ms
(bench/prompt_trie_probe.py, docs/PERFORMANCE.md). Upstream
knows it (ml-explore/mlx-lm#1607); the pinned release has the quadratic
search.

``PromptTrie`` here walks the same nodes in the same order with the same
pruning, and keeps each path as a link to its parent instead of a copy, so
it returns exactly what mlx-lm's would (tests/worker/test_prompt_cache.py
holds the two to each other on generated tries) in time linear in the nodes
it visits. Everything else is mlx-lm's.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.models import cache as mlx_cache

__all__ = ["PromptCache", "PromptTrie"]


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
    """``LRUPromptCache`` on the ``PromptTrie`` above."""

    def __init__(self, max_size: int = 10, max_bytes: int = 1 << 63) -> None:
        super().__init__(max_size=max_size, max_bytes=max_bytes)
        self._trie = PromptTrie()
