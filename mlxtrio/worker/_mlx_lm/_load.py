"""Loading models with mlx-lm: a directory, a hub repository, the demo's architecture, and whether a model batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx_lm
from mlx_lm.models.cache import make_prompt_cache

__all__ = ["can_batch", "download", "llama_model", "load", "load_tokenizer", "unsupported_architecture"]


def load(path: Path) -> tuple[Any, Any, dict]:
    """The model, its ``TokenizerWrapper`` and its config, as mlx-lm loads them."""
    return mlx_lm.load(str(path), return_config=True)


def load_tokenizer(path: Path, *, eos_token_ids: Any = None) -> Any:
    """The ``TokenizerWrapper`` of the model in ``path``, as mlx-lm's ``load`` makes it (for a model mlx-vlm loads)."""
    from mlx_lm.utils import load_tokenizer as _load_tokenizer

    return _load_tokenizer(path, eos_token_ids=eos_token_ids)


def unsupported_architecture(path: Path) -> str | None:
    """Why mlx-lm has no model class for the directory's config.json, in a sentence; None if it has one."""
    from mlx_lm.utils import _get_classes, load_config

    config = load_config(path)
    try:
        _get_classes(config)
    except ValueError:
        model_type = config["model_type"]
        return f"unsupported architecture: model_type {model_type!r} is not one that mlx-lm {mlx_lm.__version__} implements"
    return None


def download(repo: str) -> Path:
    """A hub repository's files, fetched (or found in the hub cache) as mlx-lm fetches them."""
    from mlx_lm.utils import _download

    return Path(_download(repo))


def llama_model(args: dict) -> Any:
    """A llama of the given configuration, its weights initialised at random (the demo model)."""
    from mlx_lm.models import llama

    return llama.Model(llama.ModelArgs.from_dict(args))


def can_batch(model: Any) -> bool:
    """Whether every layer's KV cache can be merged into (and split out of) a batch."""
    return all(callable(getattr(cache, "merge", None)) for cache in make_prompt_cache(model))
