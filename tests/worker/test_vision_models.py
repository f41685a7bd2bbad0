"""The tiny Qwen2-VL test checkpoint (vision_models.py): what mlx-vlm and mlx-lm make of it.

It stands in for Qwen2-VL and its kin (multimodal rotary positions) in the
worker's tests, so it must load through mlx-vlm's own loader as ``qwen2_vl``
(model and processor), its language model must be one mlx-lm's text-only
``qwen2_vl`` class holds on the same arrays, its text must stay printable,
and its answers must depend on the image.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxtrio.worker._demo import never_sampled_ids

from .vision_models import (
    IMAGE_PAD,
    MIXED_PARTS,
    QUESTION,
    QWEN2_VL_IMAGE_TOKENS_64,
    QWEN2_VL_VERSION,
    VISION_END,
    VISION_START,
    build_tiny_qwen2_vl,
    greedy_tokens,
    image_prompt,
    mixed_parts_rendered,
    noise_image,
    red_image,
)


@pytest.fixture(scope="module")
def loaded(tiny_qwen2_vl):
    from mlx_vlm.utils import load

    return load(str(tiny_qwen2_vl))


def _text_model(directory, model):
    """mlx-lm's class for the whole config, on mlx-vlm's language model's arrays, loaded strictly (as the worker does)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    config = json.loads((directory / "config.json").read_text())
    model_class, args_class = _get_classes(config)
    text_model = model_class(args_class.from_dict(config))
    weights = tree_flatten(model.language_model.parameters())
    text_model.load_weights([("language_model." + name, value) for name, value in weights], strict=True)
    return text_model


def test_mlx_vlm_loads_it_offline_as_qwen2_vl(tiny_qwen2_vl, loaded):
    from mlx_vlm.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

    model, processor = loaded
    tokenizer = processor.tokenizer
    config = json.loads((tiny_qwen2_vl / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and config["mlxtrio_tiny_qwen2_vl"] == QWEN2_VL_VERSION
    # mlx-vlm's own processor: its loader falls back to transformers' on any error, silently.
    assert type(processor) is Qwen2VLProcessor
    text = model.config.text_config
    assert text.vocab_size == config["vocab_size"] == config["text_config"]["vocab_size"] == len(tokenizer)
    assert text.rope_scaling == {"type": "mrope", "mrope_section": [2, 3, 3]}
    assert sum(text.rope_scaling["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    for key, token in (("image_token_id", IMAGE_PAD), ("vision_start_token_id", VISION_START)):
        assert getattr(model.config, key) == config[key] == tokenizer.convert_tokens_to_ids(token)
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|end|>")
    # A 64x64 image: 84x84 after the resize, 6x6 patches, merged 2x2 into 3x3 image tokens.
    inputs = processor(text=image_prompt(tokenizer), images=[red_image()])
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 6]]
    assert inputs["pixel_values"].shape == (36, 3 * 2 * 14 * 14)
    assert inputs["input_ids"][0].tolist().count(model.config.image_token_id) == QWEN2_VL_IMAGE_TOKENS_64 == 9
    # A large image is capped at 112x112 pixels: 16 image tokens.
    large = processor(text=image_prompt(tokenizer), images=[noise_image(0, (480, 480))])
    assert large["input_ids"][0].tolist().count(model.config.image_token_id) == 16


def test_the_template_renders_content_parts_in_order(loaded):
    tokenizer = loaded[1].tokenizer
    rendered = tokenizer.apply_chat_template(MIXED_PARTS, tokenize=False, add_generation_prompt=True)
    assert rendered == mixed_parts_rendered(VISION_START + IMAGE_PAD + VISION_END)


def test_an_image_takes_multimodal_rotary_positions(loaded):
    model, processor = loaded
    inputs = processor(text=image_prompt(processor.tokenizer, "Hi"), images=[red_image()])
    positions, deltas = model.language_model.get_rope_index(
        inputs["input_ids"], inputs["image_grid_thw"], None, inputs["attention_mask"]
    )
    ids = inputs["input_ids"][0].tolist()
    first = ids.index(model.config.image_token_id)
    image = slice(first, first + 9)
    # Time, height and width of the 3x3 grid, each from the image's first position; the text after it
    # goes on from the largest, so the prompt's positions end 6 before its length.
    t, h, w = (np.array(axis[0]) for axis in positions.tolist())
    assert (t[image] == first).all()
    assert h[image].tolist() == [first + row for row in range(3) for _ in range(3)]
    assert w[image].tolist() == [first + column for _ in range(3) for column in range(3)]
    assert t[first + 9] == first + 3 and t[-1] == len(ids) - 1 - 6
    assert deltas.tolist() == [[-6]]


def _plain_logits(model, ids: mx.array) -> mx.array:
    """mlx-vlm's language model's logits for text alone, from a fresh prompt's positions.

    It keeps the last prompt's positions on itself and reuses them for the next prompt that brings no
    pixels; forgetting them makes this prompt its first.
    """
    model.language_model._position_ids = model.language_model._rope_deltas = None
    return model.language_model(ids).logits


def _text_ids(processor) -> mx.array:
    prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there, how are you?"}], tokenize=False, add_generation_prompt=True
    )
    return mx.array([processor.tokenizer.encode(prompt, add_special_tokens=False)])


def test_mlx_vlm_keeps_the_last_prompts_positions(loaded):
    model, processor = loaded
    ids = _text_ids(processor)
    fresh = _plain_logits(model, ids)
    inputs = processor(text=image_prompt(processor.tokenizer, "Hi"), images=[red_image()])
    model(
        inputs["input_ids"],
        pixel_values=inputs["pixel_values"],
        mask=inputs["attention_mask"],
        image_grid_thw=inputs["image_grid_thw"],
    )
    # The image prompt's positions, cut to this prompt's length, stand in for this prompt's own.
    assert not np.allclose(np.array(model.language_model(ids).logits), np.array(fresh), atol=1e-3)
    assert np.allclose(np.array(_plain_logits(model, ids)), np.array(fresh))


def test_mlx_lm_text_class_holds_the_language_model(tiny_qwen2_vl, loaded):
    from mlx_lm.models import qwen2_vl
    from mlx_lm.models.cache import make_prompt_cache

    model, processor = loaded
    text_model = _text_model(tiny_qwen2_vl, model)
    assert isinstance(text_model, qwen2_vl.Model)
    ids = _text_ids(processor)
    # Text alone takes plain positions in both (the three rotary axes equal), so the logits agree.
    expected = _plain_logits(model, ids)
    assert np.allclose(np.array(text_model(ids)), np.array(expected), atol=1e-3)
    cache = make_prompt_cache(text_model)
    chunks = [text_model(ids[:, :5], cache=cache), text_model(ids[:, 5:], cache=cache)]
    assert np.allclose(np.array(mx.concatenate(chunks, axis=1)), np.array(expected), atol=1e-3)


def test_vision_tokens_are_never_sampled(tiny_qwen2_vl, loaded):
    model, processor = loaded
    tokenizer = processor.tokenizer
    never = never_sampled_ids(tiny_qwen2_vl / "tokenizer.json", keep=(tokenizer.convert_tokens_to_ids("<|end|>"),))
    assert {tokenizer.convert_tokens_to_ids(token) for token in (VISION_START, IMAGE_PAD, VISION_END)} <= set(never)
    allowed = np.array(sorted(set(range(len(tokenizer))) - set(never)))
    for image in (red_image(), noise_image(1)):
        inputs = processor(text=image_prompt(tokenizer), images=[image])
        logits = np.array(
            model(
                inputs["input_ids"],
                pixel_values=inputs["pixel_values"],
                mask=inputs["attention_mask"],
                image_grid_thw=inputs["image_grid_thw"],
            ).logits[0]
        )
        # At every position, image ones included: far below every other token's, as the demo's are.
        gap = logits[:, allowed].min(axis=1) - logits[:, never].max(axis=1)
        assert gap.min() > 60, gap.min()


def _greedy(loaded, image, question: str = QUESTION) -> list[int]:
    return greedy_tokens(loaded, image, question, max_tokens=16)


def test_the_image_steers_the_answer(loaded):
    red, noise, other_noise = _greedy(loaded, red_image()), _greedy(loaded, noise_image(1)), _greedy(loaded, noise_image(2))
    assert red != noise and noise != other_noise and red != other_noise
    assert _greedy(loaded, red_image()) == red
    for tokens in (red, noise, other_noise, _greedy(loaded, noise_image(1), "Describe it.")):
        assert len(tokens) == 16 and len(set(tokens)) >= 6, tokens


def test_built_once_and_deterministically(tmp_path, tiny_qwen2_vl):
    again = build_tiny_qwen2_vl(tmp_path / "tiny")
    assert sorted(path.name for path in again.iterdir()) == sorted(path.name for path in tiny_qwen2_vl.iterdir())
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (again / name).read_bytes() == (tiny_qwen2_vl / name).read_bytes(), name
    # A second call finds it built: the same directory, untouched.
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_qwen2_vl(again) == again and (again / "model.safetensors").stat().st_mtime_ns == stamp
