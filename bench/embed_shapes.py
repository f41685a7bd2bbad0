"""Embedding models of real shapes with seeded random weights, for ``bench.embed_bench`` on a GPU.

- ``bert-base``: BERT-base's encoder (bge-base, e5-base and their kin), mean pooled, as mlx-embeddings runs it;
- ``qwen3-embedding-0.6b``: Qwen3-Embedding-0.6B's decoder, pooled at its last token, as mlx-lm runs it.

They are built by the worker's own demo builders (mlxtrio/worker/_embed/_demo.py) with these shapes over the
demos', in bfloat16, so the server loads them as it loads a real checkpoint (config.json, safetensors,
sentence-transformers files). Their tokenizers are the demos' own: the embedding tables have the real
vocabulary's rows, of which the tokenizers use the first few hundred. A forward pass costs per token what the
real model's does; how many tokens a text becomes differs, so the harness reports tokens per input.
"""

from __future__ import annotations

from pathlib import Path

from mlxtrio.worker import _demo
from mlxtrio.worker._embed import _demo as _embed_demo

__all__ = ["EMBED_SHAPES", "build_embed_model"]

# Bump when a shape or the build changes: an older build in DEST is rebuilt.
EMBED_BUILD_VERSION = 1
EMBED_SHAPES = {
    "bert-base": (
        _embed_demo.build_encoder,
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
            "vocab_size": 30522,
        },
    ),
    "qwen3-embedding-0.6b": (
        _embed_demo.build_decoder,
        {
            "hidden_size": 1024,
            "num_hidden_layers": 28,
            "intermediate_size": 3072,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 32768,
            "vocab_size": 151669,
            "matryoshka_dimensions": [32, 64, 128, 256, 512, 768, 1024],
        },
    ),
}


def build_embed_model(name: str, dest: Path) -> Path:
    """Build the embedding shape ``name`` into ``dest`` (kept if it holds this build already) and return it."""
    builder, shape = EMBED_SHAPES[name]
    return _demo.build_once(
        dest,
        key="mlxtrio_bench_embed",
        version=EMBED_BUILD_VERSION,
        build=lambda directory: builder(directory, marker={"mlxtrio_bench_embed": EMBED_BUILD_VERSION}, shape=shape, bfloat16=True),
    )
