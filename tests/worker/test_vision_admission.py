"""An image request's admission (a tiny Qwen2-VL): a heartbeat for each image it decodes, and a kept cache that
cannot be cut back out of an image is not used as if it had been, and one that ends between images is used."""

from __future__ import annotations

import msgspec
import pytest
from mlx_lm.models.cache import KVCache

import mlx.core as mx
from mlxtrio._protocol import ChatMessage, ContentPart, Generate, ImageInput
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._mlx_lm import make_prompt_cache
from mlxtrio.worker._prompt import PromptTokens, keep_cache
from mlxtrio.worker._sequential import SequentialEngine

from .test_vision_positions import engine, png, qwen, reference, request, run

__all__ = ["qwen"]


class _Untrimmable(KVCache):
    """A cache that cannot be cut back, as a sliding window past its size cannot."""

    def is_trimmable(self) -> bool:
        return False


def test_images_prepared_off_the_loop_are_admitted_without_decoding_them_again(qwen, monkeypatch) -> None:  # noqa: ANN001
    """The worker's loop has a request's images decoded and processed on the preparer's thread, then admits it:
    the admission takes what was prepared, and each image prepared counts as progress (worker/_main.py)."""
    parts, tokenizer, vision = qwen
    counted = SequentialEngine(parts.text_model, tokenizer, context_length=4096, prompt_cache_bytes=0, prefill_step_size=7, progress=lambda: None, vision=vision)
    each = msgspec.structs.replace(request(1, (1, 2, 3)), count_only=True)
    inline = len(PromptTokens(tokenizer, context_length=4096, vision=vision)(each))
    before = counted.images.prepared
    prepared = counted.images.submit(each).result(timeout=60)
    assert counted.images.prepared == before + 3
    from mlxtrio.worker._vision import _prompt

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image prepared is not decoded again")

    monkeypatch.setattr(_prompt, "decode_image", no_decoding)
    counted.images.hold(each, prepared)
    assert counted.admit(each) == inline
    # Taken by that admission: the next one of the same id would prepare its own.
    with pytest.raises(AssertionError, match="not decoded again"):
        counted.admit(each)


def cached_tokens(engine, each: Generate) -> tuple[str, int]:  # noqa: ANN001
    """``each``'s text, and how many of its prompt's tokens came from the prompt cache."""
    engine.admit(each)
    text, cached = "", None
    while engine.active:
        deltas, failures = engine.step()
        engine.settle()
        assert not failures, failures
        for delta in deltas:
            text += delta.text
            if delta.finish_reason is not None:
                cached = delta.cached_tokens
    assert cached is not None
    return text, cached


def test_a_kept_cache_that_ends_inside_an_image_and_cannot_be_cut_is_not_used(qwen) -> None:  # noqa: ANN001
    parts, tokenizer, vision = qwen
    cached = engine(qwen, BatchEngine, prompt_cache_bytes=1 << 26)
    each = request(1, (3, 5))
    prompt = PromptTokens(tokenizer, context_length=4096, vision=vision)(each)
    # An entry that ends inside the second image, and cannot be cut back (as a sliding window past its size).
    held = prompt.images_end - 5
    assert prompt.spans[1][0] < held
    kept = [_Untrimmable() for _ in make_prompt_cache(parts.text_model)]
    for layer in kept:
        layer.update_and_fetch(mx.zeros((1, 2, held, 16)), mx.zeros((1, 2, held, 16)))
    keep_cache(cached._prompt_cache, prompt.key[:held], kept)
    assert cached_tokens(cached, each) == (reference(qwen, each), 0)


def test_a_next_turn_with_a_new_image_reuses_the_turns_before_it(qwen) -> None:  # noqa: ANN001
    parts, tokenizer, vision = qwen
    cached = engine(qwen, BatchEngine, prompt_cache_bytes=1 << 26)
    first = request(1, (3,))
    answer = run(cached, [first])[1]
    later = ChatMessage("user", "and this?", parts=(ContentPart(image=1), ContentPart(text="and this?")))
    second = Generate(
        2, first.params, messages=(*first.messages, ChatMessage("assistant", answer), later),
        images=(*first.images, ImageInput(png(5), "messages[2].content[0]")),
    )
    # The first turn, its image included, comes from the prompt cache: only the new image and what follows is prefilled.
    first_turn = PromptTokens(tokenizer, context_length=4096, vision=vision)(first)
    text, hit = cached_tokens(cached, second)
    assert hit >= first_turn.images_end
    assert text == reference(qwen, second)
