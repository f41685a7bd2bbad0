"""Loading an embedding model: its plan from its files, the model, its tokenizer, and what it tells in ``Ready``."""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from ... import _protocol as p
from ..._models import takes_images
from .._model_source import LoadError
from ._files import embedding_plan
from ._inputs import InputTokens
from ._model import EmbeddingModel, load_embedding_model

__all__ = ["Embedder", "load_embedder"]

# A model whose files give no context at all (no max_position_embeddings, no tokenizer limit): BERT's.
_FALLBACK_MAX_TOKENS = 512


@attrs.frozen
class Embedder:
    """An embedding model ready to serve: its inputs' tokens, its vectors, and what it is (``Ready.embedding``)."""

    model: EmbeddingModel
    inputs: InputTokens
    info: p.EmbeddingInfo
    settings: p.EmbeddingSettings


def load_embedder(config: p.WorkerConfig, path: Path) -> Embedder:
    """The embedding model in ``path`` with ``config``'s settings; ``LoadError`` for one that cannot embed."""
    from .._mlx_lm import load_tokenizer

    if takes_images(path):
        raise LoadError("it is a vision model; mlxtrio embeds with text models only")
    plan = embedding_plan(path, config.embedding)
    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:  # noqa: BLE001 - a tokenizer transformers cannot build is this load's failure
        raise LoadError(f"could not load its tokenizer: {type(exc).__name__}: {exc}") from exc
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    pad_id = hf.pad_token_id if isinstance(getattr(hf, "pad_token_id", None), int) else 0
    model = load_embedding_model(path, plan, pad_id=pad_id)
    vocabulary = json.loads((path / "config.json").read_bytes()).get("vocab_size")
    if type(vocabulary) is not int or vocabulary <= 0:
        raise LoadError("its config.json gives no vocab_size")
    max_tokens = plan.max_tokens or _FALLBACK_MAX_TOKENS
    inputs = InputTokens(tokenizer, max_tokens=max_tokens, vocabulary=vocabulary)
    # One token through the model: its width, and a model that cannot run fails here rather than at a request.
    try:
        dimensions = model.embed([[pad_id]]).shape[1]
    except Exception as exc:  # noqa: BLE001 - as for loading
        raise LoadError(f"it could not embed a token: {type(exc).__name__}: {exc}") from exc
    info = p.EmbeddingInfo(
        dimensions=dimensions,
        max_tokens=max_tokens,
        pooling=plan.pooling,
        normalize=plan.normalize,
        matryoshka=plan.matryoshka,
        architecture=plan.architecture,
    )
    return Embedder(model, inputs, info, config.embedding)
