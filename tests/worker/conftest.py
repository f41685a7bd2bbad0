"""The worker's tests: the demo model, loaded once per test module."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
import pytest

from mlxtrio.worker._demo import ensure_demo_model


@pytest.fixture(scope="module")
def demo(cache_dir: Path):  # noqa: ANN201 - (model, tokenizer)
    return mlx_lm.load(str(ensure_demo_model(cache_dir)))
