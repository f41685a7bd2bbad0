"""A vision-language benchmark model: Qwen2-VL-2B-Instruct's exact shape with seeded random weights, built offline.

    python -m bench.bench_models qwen2-vl-2b-bf16 DEST

Qwen2-VL-2B's language model is Qwen2-1.5B's shape, placing tokens by
multimodal rotary positions; its vision tower is a 32-layer ViT of 14-pixel
patches whose tokens are merged 2 x 2 into the language model's width. The
processor is Qwen2-VL's, with its real pixel bounds: a 448 x 448 image is
256 image tokens, between ``<|vision_start|>`` and ``<|vision_end|>``.
mlx-vlm loads it as ``qwen2_vl``; mlxtrio serves it as a vision model (its
config has a ``vision_config``).

Its text is as bench_models.py's shapes' is: the synthetic byte-level BPE of
the real vocabulary's size (151,936 tokens with the vision tokens, as
mlx-vlm wants the config's size to be the tokenizer's), and the output rows
of every special token (the end of a turn and the vision tokens included)
and of the single non-text bytes are zero, so greedy text is visible and
runs to ``max_tokens``. The embedding is the output layer (tied, as the
real model's), so those tokens embed as zeros in a prompt too, which costs
what any embedding costs.

Below the 2B's builder, what any Qwen2-VL checkpoint built here needs (its
config, processor files and chat template, its mlx-vlm model): the tests'
tiny Qwen2-VL (tests/worker/vision_models.py) is built from them too.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import attrs

from mlxtrio.worker._demo import build_once, never_sampled_ids
from mlxtrio.worker._vision import _demo as _vision_demo

from .bench_models import CHAT_TEMPLATE, SPECIAL, VOCAB_SIZE, build_tokenizer

__all__ = [
    "QWEN2_VL_2B",
    "VISION_TOKENS",
    "VOCAB_SIZE",
    "Qwen2VLShape",
    "build_qwen2_vl",
    "qwen2_vl_config",
    "qwen2_vl_model",
    "qwen2_vl_vision_args",
    "qwen_image_parts",
    "save_model",
    "write_qwen2_vl_processor",
]

# Bump when anything below changes: an older build in DEST is rebuilt.
BUILD_VERSION = 1
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_TOKENS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
# Qwen2-VL's processor's bounds on an image's area, in pixels (56 x 56 up to 16,384 merged tokens).
MIN_PIXELS = 3136
MAX_PIXELS = 12845056
_SEED = 0


@attrs.frozen(kw_only=True)
class Qwen2VLShape:
    """A Qwen2-VL's dimensions; its vision tower's output is the language model's width."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    # The rotary frequencies' split between time, height and width: half the attention head's dimension.
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_embed_dim: int
    vision_num_heads: int

    def __attrs_post_init__(self) -> None:
        if 2 * sum(self.mrope_section) != self.hidden_size // self.num_attention_heads:
            raise ValueError(f"mrope_section {self.mrope_section} is not half the head dimension")


# Qwen/Qwen2-VL-2B-Instruct's config.json.
QWEN2_VL_2B = Qwen2VLShape(
    hidden_size=1536,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    intermediate_size=8960,
    mrope_section=(16, 24, 24),
    vision_depth=32,
    vision_embed_dim=1280,
    vision_num_heads=16,
)


def build_qwen2_vl(dest: Path, *, shape: Qwen2VLShape = QWEN2_VL_2B) -> Path:
    """A Qwen2-VL of ``shape`` built into ``dest`` (kept if it holds this build already) in bf16; its directory."""
    return build_once(dest, key="mlxtrio_bench_qwen2_vl", version=BUILD_VERSION, build=functools.partial(_build, shape=shape))


def _build(directory: Path, *, shape: Qwen2VLShape) -> None:
    import mlx.core as mx
    from tokenizers import Tokenizer

    # ChatML, as Qwen's, each message's content a string or a list of parts.
    template = _vision_demo._CONTENT_MACRO + CHAT_TEMPLATE.replace("{{ message['content'] }}", "{{ content_of(message['content']) }}")
    eos = build_tokenizer(
        directory, special=[*SPECIAL, *VISION_TOKENS], chat_template=qwen_image_parts(template), processor_class="Qwen2VLProcessor"
    )
    vision = qwen2_vl_vision_args(depth=shape.vision_depth, embed_dim=shape.vision_embed_dim, num_heads=shape.vision_num_heads, hidden_size=shape.hidden_size)
    write_qwen2_vl_processor(directory, vision=vision, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in VISION_TOKENS}
    ids.update(bos=tokenizer.token_to_id("<|endoftext|>"), eos=eos)
    text = {
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "intermediate_size": shape.intermediate_size,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
    }
    config = qwen2_vl_config(
        text,
        vocab_size=tokenizer.get_vocab_size(),
        rope_theta=1000000.0,
        mrope_section=list(shape.mrope_section),
        tie_word_embeddings=True,
        vision=vision,
        ids=ids,
        marker={"mlxtrio_bench_qwen2_vl": BUILD_VERSION},
    )
    mx.random.seed(_SEED)
    model = qwen2_vl_model(config, vision)
    # Special tokens and single non-text bytes: never the greedy pick (tied: the embedding is the output layer).
    model.language_model.model.embed_tokens.weight[mx.array(never_sampled_ids(directory / "tokenizer.json"))] = 0
    model.set_dtype(mx.bfloat16)
    save_model(directory, model, config)


# What any Qwen2-VL checkpoint built here is made of.


def qwen2_vl_vision_args(*, depth: int, embed_dim: int, num_heads: int, hidden_size: int) -> dict:
    """The vision tower's config: Qwen2-VL's ViT of ``depth`` layers, 14-pixel patches merged 2 x 2 into ``hidden_size``."""
    return {
        "model_type": "qwen2_vl",
        "depth": depth,
        "embed_dim": embed_dim,
        "hidden_size": hidden_size,
        "hidden_act": "quick_gelu",
        "mlp_ratio": 4,
        "num_heads": num_heads,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }


def qwen_image_parts(template: str) -> str:
    """A template of demo-vision's content macro (``_vision_demo._CONTENT_MACRO``) with an image part rendered as
    Qwen's ``<|vision_start|><|image_pad|><|vision_end|>``, which the processor expands to the image's tokens."""
    old = "%}" + _vision_demo.IMAGE_TOKEN + "{%"
    assert template.count(old) == 1, old
    return template.replace(old, "%}" + VISION_START + IMAGE_PAD + VISION_END + "{%")


def write_qwen2_vl_processor(directory: Path, *, vision: dict, min_pixels: int, max_pixels: int) -> None:
    """Qwen2-VL's processor files: an image resized to sides of whole merged patches, its area within the bounds."""
    image = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "do_resize": True,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": _vision_demo._CLIP_MEAN,
        "image_std": _vision_demo._CLIP_STD,
        "do_convert_rgb": True,
        "patch_size": vision["patch_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "merge_size": vision["spatial_merge_size"],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    video = dict(image, video_processor_type="Qwen2VLVideoProcessor")
    del video["image_processor_type"]
    (directory / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (directory / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2))


def qwen2_vl_config(
    text: dict,
    *,
    vocab_size: int,
    rope_theta: float,
    mrope_section: list[int],
    tie_word_embeddings: bool,
    vision: dict,
    ids: dict[str, int],
    marker: dict[str, int],
) -> dict:
    """config.json: the language model's settings (``text``'s and these) twice, as Qwen's own checkpoints hold them:
    at the top level, which mlx-vlm's ``qwen2_vl`` reads, and in ``text_config``, which transformers 5 writes and
    mlx-lm's ``qwen2_vl`` reads; ``ids``: the vision tokens', "bos"'s and "eos"'s; ``marker``: the build's version."""
    text = dict(
        text,
        vocab_size=vocab_size,
        hidden_act="silu",
        rope_theta=rope_theta,
        rope_scaling={"type": "mrope", "mrope_section": mrope_section},
        tie_word_embeddings=tie_word_embeddings,
        use_sliding_window=False,
        sliding_window=None,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
    )
    text_config = dict(
        text,
        model_type="qwen2_vl_text",
        rope_parameters={"rope_type": "default", "type": "mrope", "mrope_section": mrope_section, "rope_theta": rope_theta},
        layer_types=["full_attention"] * text["num_hidden_layers"],
    )
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        **text,
        "text_config": text_config,
        "vision_config": vision,
        "image_token_id": ids[IMAGE_PAD],
        "video_token_id": ids[VIDEO_PAD],
        "vision_start_token_id": ids[VISION_START],
        "vision_end_token_id": ids[VISION_END],
        **marker,
    }


def qwen2_vl_model(config: dict, vision: dict) -> Any:
    """mlx-vlm's Qwen2-VL of ``config``, its weights random (seed MLX first)."""
    from mlx_vlm.models.qwen2_vl import Model, ModelConfig, TextConfig, VisionConfig

    model_config = ModelConfig.from_dict(json.loads(json.dumps(config)))
    model_config.text_config = TextConfig.from_dict({key: value for key, value in config.items() if key != "vision_config"})
    model_config.vision_config = VisionConfig.from_dict(vision)
    return Model(model_config)


def save_model(directory: Path, model: Any, config: dict) -> None:
    """The model's weights and ``config`` as mlx-vlm loads them."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "mlx"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
