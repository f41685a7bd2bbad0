"""Loading one rank's shard of a model, as mlx-lm's ``sharded_load`` does it, from a directory with or without an index.

``sharded_load`` reads ``model.safetensors.index.json`` to fetch only the
files a pipeline stage needs; many small models ship one
``model.safetensors`` and no index. The files are already here (a local
directory, or a repository fetched whole), so the index is not needed: the
model is loaded lazily, cut to this rank's part (``pipeline``: a run of
layers; ``shard``: a slice of every layer), and only what is left is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import mlx.core as mx
import mlx_lm
from mlx_lm.utils import load_model

from ._load import load_tokenizer

__all__ = ["Shard", "load_shard", "shard_refusal"]


def _can_pipeline(model: Any) -> bool:
    # sharded_load's own test.
    return hasattr(model, "model") and hasattr(model.model, "pipeline")


def _can_split_tensors(model: Any) -> bool:
    return hasattr(model, "shard")


def shard_refusal(model: Any, model_type: str, parallel: str) -> str | None:
    """Why mlx-lm cannot run ``model`` split ``parallel``-wise, in a sentence; None where it can."""
    can = _can_pipeline(model) if parallel == "pipeline" else _can_split_tensors(model)
    if can:
        return None
    other = "tensor" if parallel == "pipeline" else "pipeline"
    can_other = _can_split_tensors(model) if parallel == "pipeline" else _can_pipeline(model)
    hint = f': use parallel = "{other}"' if can_other else ""
    return f"mlx-lm {mlx_lm.__version__} cannot split {model_type} models by {parallel} parallelism{hint}"


@attrs.frozen
class Shard:
    """This rank's part of the model: the model, its tokenizer and config, and which part it holds."""

    model: Any
    tokenizer: Any
    config: dict
    # A pipeline stage's layers, [first, end); None where every rank holds a slice of each layer (tensor parallel).
    span: tuple[int, int] | None
    # The model's layers.
    layers: int

    def describe(self, span: tuple[int, int] | None, ranks: int) -> str:
        """A shard of this model in words, for the status page: "layers 12-23 of 24", "1/2 of every layer"."""
        if span is None:
            return f"1/{ranks} of every layer"
        return f"layers {span[0]}-{span[1] - 1} of {self.layers}"


def load_shard(path: Path, world: Any, parallel: str) -> Shard:
    """Rank ``world.rank()``'s shard of the model in ``path``; ValueError (a sentence) where it cannot be split so."""
    model, config = load_model(path, lazy=True, strict=False)
    refusal = shard_refusal(model, config.get("model_type", "?"), parallel)
    if refusal is not None:
        raise ValueError(refusal)
    layers = len(model.layers)
    if parallel == "pipeline":
        model.model.pipeline(world)
        span = (model.model.start_idx, model.model.end_idx)
    else:
        model.shard(world)
        span = None
    mx.eval(model.parameters())
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    return Shard(model, tokenizer, config, span, layers)
