"""A chat request with images made a prompt: its tokens, its pixels, its prefill and its key in the prompt cache.

The chat template renders each image part as its placeholder (LLaVA's
``<image>``); the text is tokenized as every chat prompt is (control tokens
that the messages spell stay text, so a message cannot forge an image).
Each placeholder is then replaced by what the model's processor makes of
that image alone: its image tokens, as many as the image gives, and its
pixels. The tokens that stand for images are the same ids whatever the
image, so the prompt cache is keyed by a copy of the prompt in which each
of them is a number drawn from its image's pixels (negative: no token has
it), and two different images never share a cache entry.

The prefill of an image prompt runs a chunk per engine step
(``_prefills.py``): the vision tower embeds the images, the language model
(mlx-vlm's) runs over the prompt's embeddings into a KV cache, and the
engine takes that cache as it takes a prompt cache hit, with the prompt's
last token (text, the generation prompt's) still to feed. From there on the
sequence is text: it decodes in a batch beside others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import attrs

from ..._protocol import ErrorKind, Generate
from .._failures import RequestError
from ._images import decode_image
from ._load import VisionParts
from ._positions import turn_to

__all__ = ["Vision", "VisionTokens"]


class VisionTokens(list):
    """A prompt's token ids (a list, as every prompt) with what its images add: the cache key and the pixels."""

    # The prompt with each image token replaced by a number from its image's pixels.
    key: list[int]
    # Where the last image's tokens end (its expansion's last token, the image's or the processor's around it).
    images_end: int
    # Each image's tokens: where its first is, and where its last ends.
    spans: list[tuple[int, int]]
    # The processor's arrays for all the images together (pixel_values and what the model also takes).
    arrays: dict[str, Any]
    # Multimodal rotary positions: the shift of the text after the images (see _positions.py); 0 for others.
    shift: int


@attrs.frozen
class PreparedImage:
    """An image as its placeholder's expansion: the processor's tokens for it, its arrays, and its pixels' digest."""

    expansion: list[int]
    arrays: dict[str, Any]
    digest: bytes


class Vision:
    """The images of one vision model's requests: prompt building and prefill."""

    def __init__(self, parts: VisionParts, *, max_pixels: int, prefill_step_size: int) -> None:
        self._model = parts.model
        self._text_model = parts.text_model
        # Whether the language model places tokens by multimodal rotary positions (see _positions.py).
        self._multimodal_positions = getattr(parts.model.language_model, "get_rope_index", None) is not None
        self._processor = parts.processor
        self._max_pixels = max_pixels
        self._prefill_step_size = prefill_step_size
        tokenizer = getattr(parts.processor, "tokenizer", parts.processor)
        self._tokenizer = tokenizer
        config = parts.model.config
        self._image_token = getattr(config, "image_token_index", None)
        if self._image_token is None:
            self._image_token = getattr(config, "image_token_id", None)
        # What the chat template writes for an image part: the processor's begin-of-image token where it has one
        # (Gemma 3 expands that), else its image token (LLaVA's "<image>").
        placeholder = next(
            (text for text in (getattr(parts.processor, "boi_token", None), getattr(parts.processor, "image_token", None)) if isinstance(text, str)),
            None,
        )
        if self._image_token is None or placeholder is None:
            # Without them, images could not be placed, nor told apart in the prompt cache.
            raise ValueError("its config names no image token (image_token_index, image_token_id), or its processor no placeholder")
        self._placeholder = (placeholder, tokenizer.convert_tokens_to_ids(placeholder))
        # Requests' images prepared off the loop's thread (``prepare``), until their admission takes them.
        self._held: dict[int, list[PreparedImage]] = {}
        # Images prepared so far: the loop's sign of progress while it has nothing else to show (worker/_main.py).
        self.images_prepared = 0

    def prepare(self, request: Generate) -> list[PreparedImage]:
        """Each of ``request``'s images decoded, resized and made its tokens and arrays by the model's processor.

        Pillow and the processor only, no MLX: the worker runs this on a thread of its own (``_preparer.py``),
        so that the batch decodes while a request's images, seconds of work for large ones, are prepared.
        """
        placeholder = self._placeholder[0]
        prepared = []
        for source in request.images:
            decoded = decode_image(source, max_pixels=self._max_pixels)
            expansion, arrays = self._expand(placeholder, decoded.image, source.where)
            prepared.append(PreparedImage(expansion, arrays, decoded.digest))
            self.images_prepared += 1
        return prepared

    def hold(self, request_id: int, prepared: list[PreparedImage]) -> None:
        """Keep a request's prepared images for its admission (``tokens``), which follows on this thread."""
        self._held[request_id] = prepared

    def forget(self, request_id: int) -> None:
        self._held.pop(request_id, None)

    def tokens(self, request: Generate, ids: list[int]) -> VisionTokens:
        """The prompt ``ids`` (the template's rendering, a placeholder per image) with each image put in: as
        ``hold`` kept them for the request, else prepared now."""
        prepared = self._held.pop(request.request_id, None)
        token = self._placeholder[1]
        found = ids.count(token)
        if found != len(request.images):
            raise RequestError(
                ErrorKind.INVALID_REQUEST,
                f"this model's chat template placed {found} images of the {len(request.images)} the messages hold",
                param="messages",
            )
        if prepared is None:
            prepared = self.prepare(request)
        prompt, key = VisionTokens(), []
        prompt.spans = []
        arrays: dict[str, list[Any]] = {}
        start = 0
        images_end = -1
        for image in prepared:
            at = ids.index(token, start)
            prompt.extend(ids[start:at])
            key.extend(ids[start:at])
            expansion = image.expansion
            image_positions = [i for i, t in enumerate(expansion) if t == self._image_token]
            if image_positions:
                prompt.spans.append((len(prompt) + image_positions[0], len(prompt) + image_positions[-1] + 1))
            for position, piece in enumerate(expansion):
                key.append(_image_key(image.digest, position) if piece == self._image_token else piece)
            prompt.extend(expansion)
            images_end = len(prompt)
            for name, value in image.arrays.items():
                arrays.setdefault(name, []).append(value)
            start = at + 1
        prompt.extend(ids[start:])
        key.extend(ids[start:])
        prompt.key = key
        prompt.images_end = images_end
        prompt.arrays = _joined(arrays)
        prompt.shift = self._shift(prompt) if self._multimodal_positions else 0
        return prompt

    def _shift(self, prompt: VisionTokens) -> int:
        """The shift of the text after ``prompt``'s images from its index (see _positions.py)."""
        import mlx.core as mx

        grid = prompt.arrays.get("image_grid_thw")
        _, deltas = self._model.language_model.get_rope_index(mx.array(list(prompt))[None], None if grid is None else mx.array(grid))
        return int(mx.array(deltas).reshape(-1)[0].item())

    def _expand(self, text: str, image: Any, where: str) -> tuple[list[int], dict[str, Any]]:
        """What the processor makes of one image's placeholder: its tokens, and its arrays."""
        import numpy as np

        try:
            features = self._processor(images=[image], text=[text], return_tensors="np")
        except Exception as exc:  # noqa: BLE001 - the processor's refusal of this image is the request's
            raise RequestError(ErrorKind.INVALID_REQUEST, f"{where}: this model's processor cannot take the image ({exc})", param=where) from None
        ids = [int(t) for t in np.asarray(features["input_ids"]).reshape(-1)]
        bos = getattr(self._tokenizer, "bos_token_id", None)
        if ids and bos is not None and ids[0] == bos:
            ids = ids[1:]  # the tokenizer's own BOS: the template wrote the prompt's
        arrays = {name: value for name, value in features.items() if name not in ("input_ids", "attention_mask")}
        return ids, arrays

    def prefill(self, prompt: VisionTokens, cache: list[Any], start: int) -> Iterator[None]:
        """Run ``prompt[start:-1]`` into ``cache`` (which holds ``prompt[:start]``), its images' embeddings and its
        text's, a chunk per ``next``: the vision tower's work with the first."""
        import mlx.core as mx

        ids = mx.array(list(prompt))[None]
        arrays = {name: mx.array(value) for name, value in prompt.arrays.items()}
        pixel_values = arrays.pop("pixel_values", None)
        features = self._model.get_input_embeddings(ids, pixel_values, **arrays)
        embeddings = features.inputs_embeds
        extra = {name: value for name, value in features.to_dict().items() if name != "inputs_embeds" and value is not None}
        language = self._model.language_model
        end = len(prompt) - 1
        for chunk in range(start, end, self._prefill_step_size):
            stop = min(chunk + self._prefill_step_size, end)
            language(ids[:, chunk:stop], inputs_embeds=embeddings[:, chunk:stop], cache=cache, **extra)
            mx.eval([layer.state for layer in cache])
            yield
        self.to_text_positions(prompt, cache)

    def to_text_positions(self, prompt: VisionTokens, cache: list[Any]) -> None:
        """A cache of ``prompt`` made ready for the text model to decode on: its keys turned by ``-prompt.shift``."""
        turn_to(cache, self._text_model, -prompt.shift)

    def to_true_positions(self, cache: list[Any]) -> None:
        """A cache's keys at their true positions, for a prefill to go on from (or text alone to decode on)."""
        turn_to(cache, self._text_model, 0)


def _image_key(digest: bytes, position: int) -> int:
    """The prompt cache's number for an image's ``position``-th token: negative, as no token id is."""
    return -1 - int.from_bytes(hashlib.blake2b(position.to_bytes(4, "little"), key=digest, digest_size=7).digest(), "little")


def _joined(arrays: dict[str, list[Any]]) -> dict[str, Any]:
    """Each array of the images, one per image, joined along its first axis as the model takes several images."""
    import numpy as np

    return {name: np.concatenate([np.asarray(value) for value in values], axis=0) for name, values in arrays.items()}
