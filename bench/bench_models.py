"""Benchmark models built here: real architectures and shapes, seeded random weights.

Decode speed does not depend on weight values, so a model of Qwen2.5-0.5B's
or Qwen2.5-7B's exact shape with random weights costs what the real one costs
per token. Its tokenizer is a byte-level BPE synthesised to the real vocabulary
size (151,936), so the embedding, the output layer and mlx-lm's BPE streaming
detokenizer do the real amount of work. Nothing is downloaded.

Like a trained model's, its output is text a client can see token by token.
Merged tokens are built from printable ASCII only, and the output rows of the
special tokens and of the single bytes outside printable ASCII are zero, so
greedy decoding never picks them (any other token's logit is the maximum of
150,000 random ones, well above zero). Without that, a random model emits byte
fragments that every streaming detokenizer rightly holds back until they form
characters, and a benchmark timing the first visible text measures that
hold-back instead of the server.

``demo`` is the server's own demo model (mlxtrio/worker/_demo.py), whose
text is printable at any temperature, built into DEST like the others.
``qwen2-vl-2b-bf16`` is a vision-language model, Qwen2-VL-2B's shape, built
by bench/vision_shapes.py.

    python -m bench.bench_models NAME DEST     # NAME: demo, qwen2.5-0.5b-bf16, qwen2.5-0.5b-4bit, qwen2.5-7b-bf16, qwen2.5-7b-4bit,
                                               #       qwen2-vl-2b-bf16 (bench/vision_shapes.py),
                                               # or an embedding shape: bert-base, qwen3-embedding-0.6b (bench/embed_shapes.py)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

from mlxtrio.worker._demo import build_demo_model, byte_decoder, never_sampled_ids

from .embed_shapes import EMBED_SHAPES, build_embed_model

SHAPES = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
    },
}
VOCAB_SIZE = 151936
BUILD_VERSION = 2  # 2: text-only merges, never-picked fragments; older builds are rebuilt
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Vision-language shapes (bench/vision_shapes.py), in bf16.
VISION_MODEL_NAMES = ["qwen2-vl-2b-bf16"]
MODEL_NAMES = ["demo"] + [f"{shape}-{dtype}" for shape in SHAPES for dtype in ("bf16", "4bit")] + VISION_MODEL_NAMES


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--models-dir``, as every benchmark takes them."""
    parser.add_argument("--model", default="demo", choices=MODEL_NAMES)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/mlxtrio-bench-models"))


def build_chosen(args: argparse.Namespace) -> Path:
    """The model ``add_model_options`` chose, built if it is not yet."""
    return build(args.model, args.models_dir / args.model)


def build_tokenizer(directory: Path, *, special: list[str] = SPECIAL, chat_template: str = CHAT_TEMPLATE, **config: str) -> int:
    """A byte-level BPE of the real vocabulary size, ``special`` tokens included; returns the end-of-sequence id.

    ``config``: more of tokenizer_config.json (a vision model's processor class, say).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    rng = random.Random(0)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    byte_of = byte_decoder()
    text = [symbol for symbol in alphabet if 32 <= byte_of[symbol] <= 126]
    tokens = list(text)
    merges = []
    target = VOCAB_SIZE - len(special)
    while len(vocab) < target:
        left = tokens[rng.randrange(min(len(tokens), 4096))]
        right = text[rng.randrange(len(text))]
        merged = left + right
        if merged in vocab or len(merged) > 12:
            continue
        vocab[merged] = len(vocab)
        tokens.append(merged)
        merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(special)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "chat_template": chat_template,
                "model_max_length": 32768,
                **config,
            }
        )
    )
    return tokenizer.token_to_id("<|im_end|>")


def build(name: str, dest: Path) -> Path:
    """Build ``name`` into ``dest`` (kept if already complete and of this build) and return its directory."""
    if name == "demo":
        # The server's own demo model, as its worker builds it into its cache.
        return build_demo_model(dest)
    if name in VISION_MODEL_NAMES:
        # That module builds on this one's tokenizer: imported here, not above.
        from .vision_shapes import build_qwen2_vl

        return build_qwen2_vl(dest)
    if name in EMBED_SHAPES:
        return build_embed_model(name, dest)
    if (dest / "config.json").exists():
        if json.loads((dest / "config.json").read_text()).get("mlxtrio_bench_version") == BUILD_VERSION:
            return dest
        shutil.rmtree(dest)
    shape_name, dtype = name.rsplit("-", 1)
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen2

    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    eos = build_tokenizer(staging)
    config = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": VOCAB_SIZE,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "eos_token_id": eos,
        "mlxtrio_bench_version": BUILD_VERSION,
        **SHAPES[shape_name],
    }
    mx.random.seed(0)
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    output = model.model.embed_tokens if config["tie_word_embeddings"] else model.lm_head
    # Special tokens and single non-text bytes: never the greedy pick.
    output.weight[mx.array(never_sampled_ids(staging / "tokenizer.json"))] = 0
    model.set_dtype(mx.bfloat16)
    if dtype == "4bit":
        nn.quantize(model, group_size=64, bits=4)
        config["quantization"] = {"group_size": 64, "bits": 4}
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    staging.rename(dest)
    return dest


if __name__ == "__main__":
    print(build(sys.argv[1], Path(sys.argv[2])))
