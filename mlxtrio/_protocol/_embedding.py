"""Embeddings: a request's inputs (``Embed``) and their vectors (``Embedded``), and what an embedding model is."""

from __future__ import annotations

import msgspec

from ._message import _Message


class EmbeddingSettings(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """How a model's embeddings are made, as the config file sets them; None: the model decides.

    The worker takes pooling and normalisation from the model's own
    sentence-transformers files (``modules.json`` and its Pooling module's
    config) where it has them; a setting here overrides them.
    """

    # "mean", "cls" or "last" (the last token: decoder embedding models); None: the model's files, else "mean"
    # for an encoder and "last" for a decoder.
    pooling: str | None
    # Scale each vector to length 1; None: the model's files (a Normalize module), else true.
    normalize: bool | None
    # The model was trained so that a vector's first k components are an embedding of their own (Matryoshka):
    # a request may ask for ``dimensions`` below the model's width. False: ``dimensions`` other than the width is a 400.
    matryoshka: bool
    # Tokens of one forward pass, padding included: a batch of inputs is cut into passes of at most this.
    batch_tokens: int
    # Seconds a pass aims at: on a model too slow for ``batch_tokens`` in that time, passes hold fewer tokens, so that
    # the worker tells its progress well inside the hang timeout.
    pass_seconds: float


class EmbeddingInfo(msgspec.Struct, array_like=True, frozen=True):
    """What an embedding model offers, as its worker found it once loaded (``Ready.embedding``)."""

    # The vectors' width.
    dimensions: int
    # Tokens an input may have (the model's context); a longer one is refused, or cut with ``Embed.truncate``.
    max_tokens: int
    pooling: str
    normalize: bool
    matryoshka: bool
    # "encoder" (BERT and its kin, through mlx-embeddings) or "decoder" (a causal LM's hidden states, through mlx-lm).
    architecture: str


class Embed(_Message, tag="embed"):
    """Embed each input: one vector per input, in order. Texts are tokenized in the worker; ids are checked there."""

    request_id: int
    # Texts, or token ids.
    inputs: tuple[str | tuple[int, ...], ...]
    # Keep the first ``dimensions`` components (then normalise again where the model normalises); None: all.
    dimensions: int | None = None
    # Cut an input over ``EmbeddingInfo.max_tokens`` to fit (Ollama's ``truncate``) instead of refusing the request.
    truncate: bool = False
    # The request's field the inputs came from, for errors that name one (``input[3]``).
    param: str = "input"


class Embedded(_Message, tag="embedded"):
    """A request's vectors, all at once (or a ``RequestFailed`` instead)."""

    request_id: int
    dimensions: int
    # float32, little-endian, one row of ``dimensions`` per input, in the inputs' order.
    vectors: bytes
    # Each input's tokens, as embedded (after a cut); their sum is the usage's prompt_tokens.
    token_counts: tuple[int, ...]
