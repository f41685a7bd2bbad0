"""The built-in embedding models: ``demo-embed`` (a tiny BERT) and ``demo-embed-decoder`` (a tiny Qwen3).

Their vectors mean nothing, but they take the whole real path offline, as
``demo`` does for text: ``demo-embed`` is a BERT encoder that mlx-embeddings
runs, with a WordPiece tokenizer trained here on the demo's corpus (a
``[CLS] ... [SEP]`` template, lower-casing, padding) and the
sentence-transformers files that say mean pooling and normalisation;
``demo-embed-decoder`` is a Qwen3 causal LM that mlx-lm runs, with the
demo's byte-level tokenizer ending each input with an end token, pooled at
its last token, normalised, and Matryoshka as Qwen3-Embedding is (its
config.json lists ``matryoshka_dimensions``, as jina's models do).

Each is built once into the cache directory, like the other demos
(``_demo.build_once``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .. import _demo

__all__ = ["build_decoder", "build_encoder", "ensure_demo_embed_decoder_model", "ensure_demo_embed_model"]

# Bump when anything below changes: a new version is a new directory.
DEMO_EMBED_VERSION = 1
DEMO_EMBED_DECODER_VERSION = 1
_BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_BERT_VOCAB_SIZE = 600
_BERT_ARGS = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}
_BERT_TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    **dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), _BERT_SPECIAL_TOKENS)),
    "model_max_length": _BERT_ARGS["max_position_embeddings"],
}
_QWEN3_ARGS = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    # Any first k of the 64 components is an embedding of its own (Matryoshka).
    "matryoshka_dimensions": [16, 32, 64],
}
# The token every input of the decoder ends with: its hidden state, which has seen the whole input, is the vector.
_DECODER_END = "<|eos|>"
_SEED = 20261206


def demo_embed_model_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"demo-embed-v{DEMO_EMBED_VERSION}"


def demo_embed_decoder_model_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"demo-embed-decoder-v{DEMO_EMBED_DECODER_VERSION}"


def ensure_demo_embed_model(cache_dir: Path) -> Path:
    """``demo-embed``'s directory, built on first use."""
    return _demo.build_once(
        demo_embed_model_path(cache_dir), key="mlxtrio_demo_embed", version=DEMO_EMBED_VERSION, build=_build_encoder
    )


def ensure_demo_embed_decoder_model(cache_dir: Path) -> Path:
    """``demo-embed-decoder``'s directory, built on first use."""
    return _demo.build_once(
        demo_embed_decoder_model_path(cache_dir),
        key="mlxtrio_demo_embed_decoder",
        version=DEMO_EMBED_DECODER_VERSION,
        build=_build_decoder,
    )


def _sentence_transformers_files(directory: Path, *, width: int, pooling: str, max_tokens: int) -> None:
    """modules.json (Transformer, Pooling, Normalize), the Pooling module's config, and sentence_bert_config.json."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir()
    (directory / "2_Normalize").mkdir()
    flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken"}
    pooling_config = {"word_embedding_dimension": width, **{flag: name == pooling for name, flag in flags.items()}}
    pooling_config.update(pooling_mode_max_tokens=False, pooling_mode_mean_sqrt_len_tokens=False, pooling_mode_weightedmean_tokens=False)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_tokens, "do_lower_case": False}))


def _build_wordpiece(directory: Path) -> int:
    """A BERT tokenizer trained on the demo's corpus; its vocabulary's size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    corpus = (Path(_demo.__file__).with_name("demo_corpus.txt")).read_text(encoding="utf-8")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=_BERT_VOCAB_SIZE, special_tokens=_BERT_SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(corpus.splitlines(), trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(_BERT_TOKENIZER_CONFIG, indent=2))
    return tokenizer.get_vocab_size()


def _save(directory: Path, model: Any, config: dict, *, bfloat16: bool) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if bfloat16:
        model.set_dtype(mx.bfloat16)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "mlx"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def _build_encoder(directory: Path) -> None:
    build_encoder(directory, marker={"mlxtrio_demo_embed": DEMO_EMBED_VERSION})


def _build_decoder(directory: Path) -> None:
    build_decoder(directory, marker={"mlxtrio_demo_embed_decoder": DEMO_EMBED_DECODER_VERSION})


def build_encoder(directory: Path, *, marker: Mapping[str, int], shape: Mapping[str, Any] = MappingProxyType({}), bfloat16: bool = False) -> None:
    """A BERT with seeded random weights in ``directory``: the demo's, or ``shape``'s settings over it (the
    benchmarks' real shapes, whose ``vocab_size`` may exceed the demo tokenizer's), ``marker`` in its config."""
    import mlx.core as mx
    from mlx_embeddings.models import bert

    vocab_size = _build_wordpiece(directory)
    config = {**_BERT_ARGS, "vocab_size": vocab_size, **shape, **marker}
    mx.random.seed(_SEED)
    model = bert.Model(bert.ModelArgs.from_dict(config))
    _sentence_transformers_files(
        directory, width=config["hidden_size"], pooling="mean", max_tokens=config["max_position_embeddings"]
    )
    _save(directory, model, config, bfloat16=bfloat16)


def build_decoder(directory: Path, *, marker: Mapping[str, int], shape: Mapping[str, Any] = MappingProxyType({}), bfloat16: bool = False) -> None:
    """A Qwen3 pooled at its last token with seeded random weights in ``directory``: the demo's, or ``shape``'s
    settings over it, ``marker`` in its config."""
    import mlx.core as mx
    from mlx_lm.models import qwen3
    from tokenizers import Tokenizer, processors

    _demo._build_tokenizer(directory)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    end = tokenizer.token_to_id(_DECODER_END)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {_DECODER_END}", pair=f"$A {_DECODER_END} $B:1 {_DECODER_END}:1", special_tokens=[(_DECODER_END, end)]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {**_QWEN3_ARGS, "vocab_size": tokenizer.get_vocab_size(), "eos_token_id": end, **shape, **marker}
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config.update(model_max_length=config["max_position_embeddings"], pad_token=_DECODER_END)
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    mx.random.seed(_SEED)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    _sentence_transformers_files(
        directory, width=config["hidden_size"], pooling="last", max_tokens=config["max_position_embeddings"]
    )
    _save(directory, model, config, bfloat16=bfloat16)
