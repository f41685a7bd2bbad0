"""The built-in ``demo`` model: a tiny llama with seeded random weights and a real tokenizer.

Its text is nonsense, but it exercises the whole real path offline (chat
template, byte-level BPE tokenizer, KV cache, sampler, streaming detokenizer),
so a fresh checkout answers a request without downloading anything. It is
materialised once into the cache directory, atomically (built in a temporary
directory, then renamed), and loaded like any other local model.

Like a trained model's, its text is printable: it never samples a special
token other than the end of a turn (which ends the answer, not text), a
control byte or a byte that is only a piece of a UTF-8 character, at any
temperature. Prompts still use the special tokens and every byte. One hidden
dimension of the residual stream is held at a constant (every embedding has
it, no layer writes to it), and the output rows of those tokens weigh that
dimension so heavily against them that their logits sit far below every
other's, whatever the context.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

# Bump when anything below changes: a new version is a new directory.
DEMO_VERSION = 4
_VOCAB_SIZE = 512
# "<think>" and "</think>" are what mlx-lm recognises a model's thinking by.
_SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<think>", "</think>"]
# Tools in the json_tools syntax (Hermes, Qwen 2.5): "<tool_call>" and
# "tool_call.name" are what mlx-lm recognises it by. Thinking as Qwen3's: an
# assistant turn's earlier thinking (reasoning_content) in a think block, and
# with enable_thinking (off unless given), the generation prompt opens one.
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>You may call functions: answer with "
    '<tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}<|end|>{% endif %}"
    "{% for message in messages %}"
    "{% set thought = '' %}"
    "{% if message['role'] == 'assistant' and message['reasoning_content'] is defined and message['reasoning_content'] %}"
    "{% set thought = '<think>\n' + message['reasoning_content'] + '\n</think>\n' %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "<|assistant|>{{ thought }}{{ message['content'] or '' }}"
    "{% for tool_call in message['tool_calls'] %}"
    "{% if tool_call.function is defined %}{% set tool_call = tool_call.function %}{% endif %}"
    '<tool_call>{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}</tool_call>'
    "{% endfor %}<|end|>"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + thought + (message['content'] or '') + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}"
    "{% if enable_thinking is defined and enable_thinking %}{{ '<think>\n' }}{% endif %}{% endif %}"
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


# The constant hidden dimension's value: about twice an embedding entry's spread, so that an embedding
# quantized to 4 bits keeps its other entries' detail.
_CONSTANT = 0.25
# The never-sampled rows' weight on it: their logits end up 60 and more below the others'.
_NEVER_SAMPLED_WEIGHT = 150.0


def demo_model_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"demo-v{DEMO_VERSION}"


@functools.cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, backwards: each printable stand-in to the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = dict(zip(printable, printable))
    extra = 0
    for byte in range(256):
        if byte not in stand_ins:
            stand_ins[byte] = 256 + extra
            extra += 1
    return {chr(stand_in): byte for byte, stand_in in stand_ins.items()}


def never_sampled_ids(tokenizer_file: Path, *, keep: Iterable[int] = ()) -> list[int]:
    """Ids of a byte-level BPE that are not printable text alone: special tokens but ``keep``, control bytes, pieces of characters."""
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    special = {token["id"] for token in data.get("added_tokens", ()) if token.get("special")}
    byte_of = byte_decoder()
    never = set(special)
    for symbol, index in data["model"]["vocab"].items():
        if index in special:
            continue
        try:
            text = bytes(byte_of[char] for char in symbol).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            never.add(index)
            continue
        if not text.isprintable():
            never.add(index)
    return sorted(never - set(keep))


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


def push_down_never_sampled(model: object, never_sampled: list[int]) -> None:
    """Give a llama (``model.embed_tokens``, ``model.layers``, ``lm_head``) the constant dimension and the rows that read it."""
    import mlx.core as mx

    # Dimension 0 of the residual stream: the same in every embedding, never written by a layer, so after
    # the final norm it is positive in every context; only the never-sampled rows read it, negatively.
    model.model.embed_tokens.weight[:, 0] = _CONSTANT
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[0, :] = 0.0
        layer.mlp.down_proj.weight[0, :] = 0.0
    model.lm_head.weight[:, 0] = 0.0
    model.lm_head.weight[mx.array(never_sampled), 0] = -_NEVER_SAMPLED_WEIGHT


def _build_weights(directory: Path, vocab_size: int, never_sampled: list[int]) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from ._mlx_lm import llama_model

    args = dict(_MODEL_ARGS, vocab_size=vocab_size)
    mx.random.seed(20261125)
    model = llama_model(args)
    push_down_never_sampled(model, never_sampled)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = dict(args, architectures=["LlamaForCausalLM"], eos_token_id=None, mlxtrio_demo=DEMO_VERSION)
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def ensure_demo_model(cache_dir: Path) -> Path:
    """The demo model's directory, built on first use."""
    return build_demo_model(demo_model_path(cache_dir))


def _marker(directory: Path, key: str) -> object:
    """``key`` in ``directory``'s config.json: the version of the built-in model there; None where there is none."""
    try:
        return json.loads((directory / "config.json").read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def build_once(target: Path, *, key: str, version: int, build: Callable[[Path], None]) -> Path:
    """``build(directory)`` into ``target``, unless it holds ``version`` (config.json's ``key``) already.

    Built in a temporary directory, then renamed: a reader never sees half a model. Another version
    there (a directory named by the caller; the cache's are per version) is replaced.
    """

    def is_this_version() -> bool:
        marker = _marker(target, key)
        return type(marker) is int and marker == version

    if is_this_version():
        return target
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        build(staging)
        if _marker(target, key) is not None and not is_this_version():
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process built it first: theirs is as good as ours. Anything else there is not ours to replace.
            if not is_this_version():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(directory: Path) -> None:
    _build_tokenizer(directory)
    vocab_size = len(json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"])
    # The eos token id is known only once the tokenizer exists.
    from transformers import PreTrainedTokenizerFast

    eos = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json")).convert_tokens_to_ids("<|end|>")
    never = never_sampled_ids(directory / "tokenizer.json", keep=(eos,))
    _build_weights(directory, max(vocab_size, len(_SPECIAL_TOKENS) + 256), never)
    config = json.loads((directory / "config.json").read_text())
    config["eos_token_id"] = eos
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def build_demo_model(target: Path) -> Path:
    """The demo model built into ``target``, unless it holds this version already; another version's demo there is replaced."""
    return build_once(target, key="mlxtrio_demo", version=DEMO_VERSION, build=_build)
