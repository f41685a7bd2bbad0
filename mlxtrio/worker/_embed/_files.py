"""What a model's files say about embedding: whether it is an embedding model, which kind, and how it pools.

Read before anything is loaded, from config.json and the sentence-transformers
files (``modules.json``, its Pooling module's ``config.json``,
``sentence_bert_config.json``). A sentence-transformers module that the
worker does not compute (a Dense layer, max pooling) fails the load: vectors
without it would be wrong without a word.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from ... import _protocol as p
from .._model_source import LoadError

__all__ = ["EmbeddingPlan", "embedding_plan", "is_embedding_model"]

# model_type (with "-" as "_") of the encoders mlx-embeddings runs; any other model is a decoder that mlx-lm runs.
ENCODERS = frozenset({"bert", "xlm_roberta", "modernbert"})
# sentence-transformers' Pooling flags, and the pooling each one is here.
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "last"}
_UNSUPPORTED_FLAGS = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
# The modules the worker computes: the model itself, pooling, normalisation.
_MODULES = {"Transformer": "transformer", "Pooling": "pooling", "Normalize": "normalize"}
# Tokenizers with no limit of their own say this large a number (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 10**18


@attrs.frozen
class EmbeddingPlan:
    """How the worker embeds with the model in a directory: its kind, pooling and limits, before it is loaded."""

    architecture: str  # "encoder" or "decoder"
    pooling: str
    normalize: bool
    # A request may ask for fewer dimensions than the width.
    matryoshka: bool
    # The most tokens of an input: the model's context, or less where its files say so.
    max_tokens: int | None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _model_type(path: Path) -> str:
    config = _json(path / "config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return model_type.replace("-", "_") if isinstance(model_type, str) else ""


def is_embedding_model(path: Path) -> bool:
    """Whether the model in ``path`` is one to embed with: an encoder, or one with sentence-transformers files."""
    return _model_type(path) in ENCODERS or (path / "modules.json").is_file()


def _modules(path: Path) -> dict[str, Path]:
    """The model's sentence-transformers modules by kind (``transformer``, ``pooling``, ``normalize``); empty: none."""
    listed = _json(path / "modules.json")
    if listed is None:
        return {}
    if not isinstance(listed, list):
        raise LoadError("its modules.json is not a list of sentence-transformers modules")
    found: dict[str, Path] = {}
    for module in listed:
        kind = module.get("type", "") if isinstance(module, dict) else ""
        name = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else ""
        if name not in _MODULES:
            raise LoadError(f"its sentence-transformers module {kind!r} is not one that mlxtrio computes (Transformer, Pooling, Normalize)")
        found[_MODULES[name]] = path / str(module.get("path") or "")
    return found


def _pooling_of(module: Path) -> str:
    """The pooling a sentence-transformers Pooling module's config.json says."""
    config = _json(module / "config.json")
    if not isinstance(config, dict):
        raise LoadError(f"its Pooling module has no readable config.json in {module.name or '.'}")
    unsupported = [flag for flag in _UNSUPPORTED_FLAGS if config.get(flag)]
    chosen = [pooling for flag, pooling in _POOLING_FLAGS.items() if config.get(flag)]
    if unsupported or len(chosen) != 1:
        said = ", ".join(flag for flag in (*_POOLING_FLAGS, *_UNSUPPORTED_FLAGS) if config.get(flag)) or "none"
        raise LoadError(f"its Pooling module asks for {said}; mlxtrio pools one way of cls, mean and last token")
    return chosen[0]


def _max_tokens(path: Path) -> int | None:
    """The context: max_position_embeddings, or less where the tokenizer or sentence-transformers says so."""
    limits = []
    for file, key in (
        ("config.json", "max_position_embeddings"),
        ("tokenizer_config.json", "model_max_length"),
        ("sentence_bert_config.json", "max_seq_length"),
    ):
        value = _json(path / file)
        value = value.get(key) if isinstance(value, dict) else None
        if type(value) is int and 0 < value < _NO_LIMIT:
            limits.append(value)
    return min(limits, default=None)


def embedding_plan(path: Path, settings: p.EmbeddingSettings) -> EmbeddingPlan:
    """How to embed with the model in ``path``: its files, with ``settings`` over them."""
    modules = _modules(path)
    architecture = "encoder" if _model_type(path) in ENCODERS else "decoder"
    if settings.pooling is not None:
        pooling = settings.pooling
    elif "pooling" in modules:
        pooling = _pooling_of(modules["pooling"])
    else:
        pooling = "mean" if architecture == "encoder" else "last"
    if settings.normalize is not None:
        normalize = settings.normalize
    else:
        # With sentence-transformers files, a Normalize module says so; without, vectors are normalised.
        normalize = "normalize" in modules or not modules
    config = _json(path / "config.json")
    listed = config.get("matryoshka_dimensions") if isinstance(config, dict) else None
    matryoshka = settings.matryoshka or (isinstance(listed, list) and bool(listed))
    return EmbeddingPlan(architecture, pooling, normalize, matryoshka, _max_tokens(path))
