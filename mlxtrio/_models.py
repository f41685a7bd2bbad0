"""Facts about model directories that both sides need, without importing MLX."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["model_directory_problem", "takes_images", "weights_size"]

# The weight files mlx-lm loads from a model directory.
WEIGHTS = "model*.safetensors"


def weights_size(path: Path) -> int:
    """Bytes of weight files in a model directory (what loading it will make resident)."""
    return sum(file.stat().st_size for file in path.glob("*.safetensors") if file.is_file())


def model_directory_problem(path: Path) -> str | None:
    """Why ``path`` is no model directory that mlx-lm could load, in words a person reads; None if it looks like one."""
    if not path.is_dir():
        return "not a directory" if path.exists() else "no such directory"
    config = path / "config.json"
    if not config.is_file():
        return "not an MLX model directory: no config.json"
    try:
        settings = json.loads(config.read_bytes())
    except OSError as exc:
        return f"unreadable config.json: {exc.strerror}"
    except ValueError as exc:  # not JSON, or not UTF-8
        return f"unreadable config.json: not valid JSON ({exc})"
    if not isinstance(settings, dict) or not isinstance(settings.get("model_type"), str):
        return "unreadable config.json: it names no model_type, as a model's config does"
    if not any(path.glob(WEIGHTS)):
        return f"no weights: no {WEIGHTS} file"
    return None


def takes_images(path: Path) -> bool:
    """Whether the model directory's config.json describes a vision-language model (one with a vision tower)."""
    try:
        config = json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("vision_config"), dict)
