"""The benchmark's Qwen2-VL (bench/vision_shapes.py) scaled down: a few narrow layers, everything else real
(the vocabulary's size, the vision tokens, the processor's patches and pixel bounds), built once per session."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from bench.vision_shapes import QWEN2_VL_2B, build_qwen2_vl

SMALL_QWEN2_VL = attrs.evolve(
    QWEN2_VL_2B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    mrope_section=(2, 3, 3), vision_depth=2, vision_embed_dim=32, vision_num_heads=2,
)
# A 448 x 448 image: 32 x 32 patches of 14 pixels, merged 2 x 2.
IMAGE_TOKENS_448 = 256


@pytest.fixture(scope="session")
def small_qwen2_vl(cache_dir: Path) -> Path:
    return build_qwen2_vl(cache_dir / "models" / "bench-qwen2-vl-small", shape=SMALL_QWEN2_VL)
