"""The built-in ``demo`` model: a tiny llama with seeded random weights and a real tokenizer.

Its text is nonsense, but it exercises the whole real path offline (chat
template, byte-level BPE tokenizer, KV cache, sampler, streaming detokenizer),
so a fresh checkout answers a request without downloading anything. It is
materialised once into the cache directory, atomically (built in a temporary
directory, then renamed), and loaded like any other local model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when anything below changes: a new version is a new directory.
DEMO_VERSION = 2
_VOCAB_SIZE = 512
_SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Tools in the json_tools syntax (Hermes, Qwen 2.5): "<tool_call>" and
# "tool_call.name" are what mlx-lm recognises it by.
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>You may call functions: answer with "
    '<tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}<|end|>{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "<|assistant|>{{ message['content'] or '' }}"
    "{% for tool_call in message['tool_calls'] %}"
    "{% if tool_call.function is defined %}{% set tool_call = tool_call.function %}{% endif %}"
    '<tool_call>{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}</tool_call>'
    "{% endfor %}<|end|>"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + (message['content'] or '') + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
_MODEL_ARGS = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": _VOCAB_SIZE,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}


def demo_model_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"demo-v{DEMO_VERSION}"


def _build_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = (Path(__file__).with_name("demo_corpus.txt")).read_text(encoding="utf-8")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.splitlines(), trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|bos|>",
                "eos_token": "<|end|>",
                "chat_template": _CHAT_TEMPLATE,
                "add_bos_token": False,
                "model_max_length": _MODEL_ARGS["max_position_embeddings"],
            },
            indent=2,
        )
    )
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|bos|>", "eos_token": "<|end|>"}, indent=2)
    )


def _build_weights(directory: Path, vocab_size: int) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from ._mlx_lm import llama_model

    args = dict(_MODEL_ARGS, vocab_size=vocab_size)
    mx.random.seed(20261125)
    model = llama_model(args)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = dict(args, architectures=["LlamaForCausalLM"], eos_token_id=None, mlxtrio_demo=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def ensure_demo_model(cache_dir: Path) -> Path:
    """The demo model's directory, built on first use."""
    target = demo_model_path(cache_dir)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        _build_tokenizer(staging)
        vocab_size = len(json.loads((staging / "tokenizer.json").read_text())["model"]["vocab"])
        _build_weights(staging, max(vocab_size, len(_SPECIAL_TOKENS) + 256))
        # The eos token id is known only once the tokenizer exists.
        from transformers import PreTrainedTokenizerFast

        eos = PreTrainedTokenizerFast(tokenizer_file=str(staging / "tokenizer.json")).convert_tokens_to_ids("<|end|>")
        config = json.loads((staging / "config.json").read_text())
        config["eos_token_id"] = eos
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            # Another process built it first: theirs is as good as ours.
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
