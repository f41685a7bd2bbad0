"""A tiny Qwen2 for worker groups: mlx-lm 0.32 pipelines qwen2 (not llama, the demo's architecture).

The demo's tokenizer and chat template, four layers (two per rank of a
two-rank pipeline), seeded random weights with the demo's never-sampled
rows pushed down (so that its output decodes to printable text), and one
``model.safetensors`` with no index, as small models ship.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlxtrio.worker import _demo

__all__ = ["QWEN2_VERSION", "build_tiny_qwen2"]

QWEN2_VERSION = 1
_ARGS = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}


def build_tiny_qwen2(target: Path) -> Path:
    """The tiny Qwen2 built into ``target``, unless it holds this version already."""
    return _demo.build_once(target, key="mlxtrio_tiny_qwen2", version=QWEN2_VERSION, build=_build)


def _build(directory: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2
    from transformers import PreTrainedTokenizerFast

    _demo._build_tokenizer(directory)
    vocabulary = len(json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"])
    eos = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json")).convert_tokens_to_ids("<|end|>")
    args = dict(_ARGS, vocab_size=vocabulary)
    mx.random.seed(20261206)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(args))
    _demo.push_down_never_sampled(model, _demo.never_sampled_ids(directory / "tokenizer.json", keep=(eos,)))
    mx.save_safetensors(str(directory / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})
    config = dict(args, architectures=["Qwen2ForCausalLM"], eos_token_id=eos, mlxtrio_tiny_qwen2=QWEN2_VERSION)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
