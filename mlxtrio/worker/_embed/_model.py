"""An embedding model loaded: a forward pass over padded inputs, pooled and normalised into one vector each.

Encoders (BERT, XLM-RoBERTa, ModernBERT) run through mlx-embeddings' model
classes, their padding masked out of attention; decoders through mlx-lm's
model class of their architecture, its backbone (``model.model``: the
hidden states after the final norm, no output head). A decoder's inputs are
padded on the right and run with the causal mask alone: no token attends to
a later one, so an input's tokens never see its padding, and its last
token's state is what it would be alone.

mlx-embeddings is imported only here: it imports mlx-vlm, which a worker
that generates never needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .._model_source import LoadError
from ._files import ENCODERS, EmbeddingPlan

__all__ = ["EmbeddingModel", "load_embedding_model"]


class EmbeddingModel:
    """``embed(rows)``: one pooled (and, as the model says, normalised) float32 vector per row of token ids."""

    def __init__(self, hidden: Callable[[mx.array, mx.array], mx.array], plan: EmbeddingPlan, *, pad_id: int, dtype: Any) -> None:
        # (ids, mask) -> hidden states, one per token.
        self._hidden = hidden
        self.plan = plan
        self._pad_id = pad_id
        self._dtype = dtype

    def embed(self, rows: list[list[int]]) -> np.ndarray:
        """The vectors of ``rows`` (token ids, each at least one), run as one padded pass."""
        lengths = [len(row) for row in rows]
        width = max(lengths)
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int32)
        mask = np.zeros((len(rows), width), dtype=np.float32)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
            mask[index, : len(row)] = 1.0
        states = self._hidden(mx.array(ids), mx.array(mask).astype(self._dtype)).astype(mx.float32)
        pooling = self.plan.pooling
        if pooling == "cls":
            pooled = states[:, 0]
        elif pooling == "last":
            pooled = states[mx.arange(len(rows)), mx.array(lengths) - 1]
        else:
            weights = mx.array(mask)[..., None]
            pooled = (states * weights).sum(axis=1) / weights.sum(axis=1)
        if self.plan.normalize:
            pooled = pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return np.array(pooled, dtype=np.float32)


def _encoder(path: Path) -> tuple[Callable[[mx.array, mx.array], mx.array], Any]:
    from mlx_embeddings.utils import load_model

    model = load_model(path, path_to_repo=str(path))
    model_type = model.config.model_type.replace("-", "_")
    if model_type == "modernbert":

        def hidden(ids: mx.array, mask: mx.array) -> mx.array:
            out = model.model(ids, attention_mask=mask)
            return out["last_hidden_state"] if isinstance(out, dict) else out[0]

    else:

        def hidden(ids: mx.array, mask: mx.array) -> mx.array:
            return model(ids, attention_mask=mask).last_hidden_state

    return hidden, model


def _decoder(path: Path) -> tuple[Callable[[mx.array, mx.array], mx.array], Any]:
    from .._mlx_lm import load, speed_up_quantized, unsupported_architecture

    problem = unsupported_architecture(path)
    if problem is not None:
        encoders = ", ".join(sorted(ENCODERS))
        raise LoadError(f"{problem}, nor one of the encoders that mlx-embeddings runs here ({encoders})")
    model, _tokenizer, _config = load(path)
    # A pass's projections take a matrix of rows, as a batched step's do (see _mlx_lm/_quantized.py).
    speed_up_quantized(model)
    backbone = getattr(model, "model", None)
    if not callable(backbone):
        raise LoadError(f"its mlx-lm model class ({type(model).__name__}) has no backbone to take hidden states from")

    def hidden(ids: mx.array, mask: mx.array) -> mx.array:  # noqa: ARG001 - right padding under a causal mask needs none
        return backbone(ids)

    return hidden, model


def load_embedding_model(path: Path, plan: EmbeddingPlan, *, pad_id: int) -> EmbeddingModel:
    """The model in ``path``, through mlx-embeddings (an encoder) or mlx-lm (a decoder)."""
    from mlx.utils import tree_flatten

    library = "mlx-embeddings" if plan.architecture == "encoder" else "mlx-lm"
    try:
        hidden, model = (_encoder if plan.architecture == "encoder" else _decoder)(path)
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the library raises (memory, a weight it cannot map) is this load's failure
        raise LoadError(f"{library} could not load it: {type(exc).__name__}: {exc}") from exc
    floats = [value.dtype for _, value in tree_flatten(model.parameters()) if mx.issubdtype(value.dtype, mx.floating)]
    return EmbeddingModel(hidden, plan, pad_id=pad_id, dtype=floats[0] if floats else mx.float32)
