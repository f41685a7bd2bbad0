"""Tiny vision checkpoints for tests, built offline like ``demo-vision`` (worker/_vision/_demo.py).

``build_tiny_qwen2_vl`` writes a Qwen2-VL: a language model that places
tokens by multimodal rotary positions (an image's tokens at (t, h, w) grid
positions, the text after it at positions of their own), Qwen2-VL's vision
tower and its processor (each ``<|image_pad|>`` expanded to the image's
merged patches). Its text is the demo's kind: seeded random weights, the
demo's tokenizer plus Qwen's vision tokens, which, like every special token
but the end of a turn, are never sampled; different images give different
greedy answers, the same image the same.

Its files (config, processor, template) and its mlx-vlm model are made as
the benchmark's Qwen2-VL-2B's are (bench/vision_shapes.py), at a tiny shape.

Below it, what the tests of any vision model share: seeded images, a prompt
of an image and a question, and mlx-vlm's greedy answer to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.vision_shapes import (
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    qwen2_vl_config,
    qwen2_vl_model,
    qwen2_vl_vision_args,
    qwen_image_parts,
    save_model,
    write_qwen2_vl_processor,
)
from mlxtrio.worker import _demo
from mlxtrio.worker._vision import _demo as _vision_demo

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_PAD",
    "MIXED_PARTS",
    "QUESTION",
    "QWEN2_VL_IMAGE_TOKENS_64",
    "QWEN2_VL_VERSION",
    "VISION_END",
    "VISION_START",
    "build_tiny_qwen2_vl",
    "greedy_tokens",
    "image_prompt",
    "mixed_parts_rendered",
    "noise_image",
    "red_image",
]

# Bump when anything below, or demo-vision's weight shaping it borrows, changes: a new version is a new build.
QWEN2_VL_VERSION = 2
# The resize bounds, in pixels: an image is resized to sides that are multiples of 28 (a patch times the merge)
# with an area between these, so a 64x64 image becomes 84x84: 6x6 patches, merged 2x2 into 3x3 image tokens.
_MIN_PIXELS = 84 * 84
_MAX_PIXELS = 112 * 112
QWEN2_VL_IMAGE_TOKENS_64 = 9

_HEAD_DIM = _demo._MODEL_ARGS["hidden_size"] // _demo._MODEL_ARGS["num_attention_heads"]
# The rotary frequencies' split between time, height and width: half the head dimension, 2:3:3 as Qwen2-VL's.
_MROPE_SECTION = [2, 3, 3]
assert sum(_MROPE_SECTION) == _HEAD_DIM // 2
_ROPE_THETA = 10000.0
_VISION_ARGS = qwen2_vl_vision_args(depth=2, embed_dim=32, num_heads=2, hidden_size=_demo._MODEL_ARGS["hidden_size"])
_SEED = 20261207

def build_tiny_qwen2_vl(target: Path) -> Path:
    """The tiny Qwen2-VL built into ``target``, unless it holds this version already."""
    return _demo.build_once(target, key="mlxtrio_tiny_qwen2_vl", version=QWEN2_VL_VERSION, build=_build_qwen2_vl)

def _qwen2_vl_config(vocab_size: int, ids: dict[str, int]) -> dict:
    text_keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "max_position_embeddings")
    return qwen2_vl_config(
        {key: _demo._MODEL_ARGS[key] for key in text_keys},
        vocab_size=vocab_size,
        rope_theta=_ROPE_THETA,
        mrope_section=_MROPE_SECTION,
        tie_word_embeddings=False,
        vision=_VISION_ARGS,
        ids=ids,
        marker={"mlxtrio_tiny_qwen2_vl": QWEN2_VL_VERSION},
    )

def _build_qwen2_vl(directory: Path) -> None:
    import mlx.core as mx
    from transformers import PreTrainedTokenizerFast

    _vision_demo._build_tokenizer(
        directory,
        tokens=(VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD),
        chat_template=qwen_image_parts(_vision_demo._chat_template()),
        processor_class="Qwen2VLProcessor",
    )
    write_qwen2_vl_processor(directory, vision=_VISION_ARGS, min_pixels=_MIN_PIXELS, max_pixels=_MAX_PIXELS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)}
    ids.update(bos=tokenizer.convert_tokens_to_ids("<|bos|>"), eos=tokenizer.convert_tokens_to_ids("<|end|>"))
    never = _demo.never_sampled_ids(directory / "tokenizer.json", keep=(ids["eos"],))
    assert {ids[IMAGE_PAD], ids[VISION_START], ids[VISION_END], ids[VIDEO_PAD]} <= set(never)
    config = _qwen2_vl_config(len(tokenizer), ids)
    mx.random.seed(_SEED)
    model = qwen2_vl_model(config, _VISION_ARGS)
    _vision_demo.shape_language_model(model.language_model, never)
    _vision_demo.shape_projector(model.vision_tower.merger.mlp[-1])
    save_model(directory, model, config)

# Images, prompts and greedy answers for the tests of a vision model, whichever its processor.

QUESTION = "What is in this picture?"
# A system turn, then a user turn of text and image parts in order, the image part in both of its forms.
MIXED_PARTS = [
    {"role": "system", "content": "be brief"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "first"},
            {"type": "image"},
            {"type": "text", "text": "then"},
            {"type": "image_url", "image_url": {"url": "data:,"}},
        ],
    },
]

def mixed_parts_rendered(image: str) -> str:
    """MIXED_PARTS as the demo's template renders it with the generation prompt, each image part as ``image``."""
    return f"<|bos|><|system|>be brief<|end|><|user|>first{image}then{image}<|end|><|assistant|>"

def noise_image(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Seeded RGB noise, ``size`` as (width, height)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))

def red_image() -> Image.Image:
    from PIL import Image

    return Image.new("RGB", (64, 64), (255, 0, 0))

def image_prompt(tokenizer: Any, question: str = QUESTION) -> str:
    """One user turn: an image, then ``question``; the generation prompt after it."""
    content = [{"type": "image"}, {"type": "text", "text": question}]
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)

def greedy_tokens(loaded: tuple[Any, Any], image: Image.Image, question: str = QUESTION, *, max_tokens: int) -> list[int]:
    """The greedy answer's tokens, through mlx-vlm's own generation loop from the processor's inputs.

    The processor is called here, not by mlx-vlm's ``prepare_inputs`` (which fails for some models under
    transformers 5), and every array it gives goes to the model: Qwen2-VL's places the image by its grid.
    """
    from mlx_vlm import stream_generate

    model, processor = loaded
    prompt = image_prompt(processor.tokenizer, question)
    inputs = dict(processor(text=prompt, images=[image]))
    extra = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    *_, last = stream_generate(
        model,
        processor,
        prompt,
        input_ids=inputs["input_ids"],
        mask=inputs["attention_mask"],
        max_tokens=max_tokens,
        temperature=0.0,
        **extra,
    )
    return last.token_ids
