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

The prompt cache keeps caches at their true positions (keys turned back by
``+delta``), so that an entry serves any later prompt that shares its
prefix, whatever images that prompt holds after it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["turn_keys"]


def turn_keys(cache: list[Any], text_model: Any, by: int) -> None:
    """Turn every key ``cache`` holds by ``by`` positions, with each layer's own rotary embedding."""
    if by == 0:
        return
    for layer, entry in zip(text_model.layers, cache, strict=True):
        keys, values = entry.state
        batch, heads, length, dims = keys.shape
        # One position per row: the rotary embedding turns each by the angle of position ``by``.
        turned = layer.self_attn.rope(keys.reshape(batch * heads * length, 1, dims), offset=by)
        entry.state = (turned.reshape(batch, heads, length, dims), values)
