"""Multimodal rotary positions (Qwen2-VL and its kin) on a text model's cache offsets.

Such a model places an image's tokens on a grid (time, height, width), and
the text after it at its index plus a shift, ``delta``, that the images
determine (negative: an image takes fewer positions than tokens). A text
model puts each token at its index in the cache. Rotary attention depends
only on the difference between a query's position and a key's, and for
text tokens the three components are equal, so the whole difference is a
rotation of every key by the same angle per frequency: with the cached keys
turned by ``-delta``, the text that follows decodes at plain cache offsets,
in a batch beside any other sequence, exactly as at its true positions.

A cache remembers how far its keys are turned (``turned``, on each of its
layers, which copies of it keep): the prompt cache keeps a finished
sequence's cache as it is, and a later prompt turns it only by the
difference it needs (none for the next turn of a conversation with the same
images; back to true positions for a prefill that adds an image, or to
none for text alone). Keys in half precision lose a little at each turn, so
they are turned as seldom as that: a conversation's keys are not turned to
and fro at every turn.
"""

from __future__ import annotations

from typing import Any

__all__ = ["mark_turned", "turn_to", "turned", "turn_keys"]

# The attribute, on each layer's cache, of how far its keys are turned.
_TURNED = "mlxtrio_turned"


def turned(cache: list[Any]) -> int:
    """How far ``cache``'s keys are turned (0: at their true positions)."""
    return getattr(cache[0], _TURNED, 0) if cache else 0


def mark_turned(cache: list[Any], by: int) -> None:
    """Record that ``cache``'s keys are turned by ``by`` (a cache taken out of a batch does not carry it)."""
    for entry in cache:
        setattr(entry, _TURNED, by)


def turn_to(cache: list[Any], text_model: Any, by: int) -> None:
    """Turn ``cache``'s keys so that they are turned by ``by`` in all, from however far they are now."""
    turn_keys(cache, text_model, by - turned(cache))
    mark_turned(cache, by)


def turn_keys(cache: list[Any], text_model: Any, by: int) -> None:
    """Turn every key ``cache`` holds by ``by`` positions, with each layer's own rotary embedding."""
    if by == 0:
        return
    for layer, entry in zip(text_model.layers, cache, strict=True):
        keys, held = entry.keys, entry.offset
        if keys is None or not held:
            continue
        batch, heads, _, dims = keys.shape
        # One position per row: the rotary embedding turns each by the angle of position ``by``.
        turned = layer.self_attn.rope(keys[..., :held, :].reshape(batch * heads * held, 1, dims), offset=by)
        keys[..., :held, :] = turned.reshape(batch, heads, held, dims)
        entry.keys = keys
