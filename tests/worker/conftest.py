"""The worker's tests: the demo model, loaded once per test module; the tiny Qwen2-VL, built once per session."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
import pytest

from mlxtrio.worker._demo import ensure_demo_model

from .vision_models import QWEN2_VL_VERSION, build_tiny_qwen2_vl


@pytest.fixture(scope="module")
def demo(cache_dir: Path):  # noqa: ANN201 - (model, tokenizer)
    return mlx_lm.load(str(ensure_demo_model(cache_dir)))


@pytest.fixture(scope="session")
def tiny_qwen2_vl(cache_dir: Path) -> Path:
    """The tiny Qwen2-VL's directory (tests/worker/vision_models.py), built on first use."""
    return build_tiny_qwen2_vl(cache_dir / "models" / f"tiny-qwen2-vl-v{QWEN2_VL_VERSION}")
