"""Facts about model directories that both sides need, without importing MLX."""

from __future__ import annotations

from pathlib import Path

__all__ = ["weights_size"]


def weights_size(path: Path) -> int:
    """Bytes of weight files in a model directory (what loading it will make resident)."""
    return sum(file.stat().st_size for file in path.glob("*.safetensors") if file.is_file())
