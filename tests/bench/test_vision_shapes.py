"""The benchmark's vision model (bench/vision_shapes.py): a Qwen2-VL whose config, tokenizer, processor and
weights agree, and whose greedy text is visible to ``max_tokens``, built scaled down (tests/bench/conftest.py)
since the real shape takes minutes."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from bench.vision_shapes import VOCAB_SIZE
from mlxtrio.worker._demo import never_sampled_ids

from ..worker.vision_models import IMAGE_PAD, VISION_END, VISION_START, greedy_tokens, image_prompt, noise_image
from .conftest import IMAGE_TOKENS_448, SMALL_QWEN2_VL


def test_the_built_qwen2_vl_is_consistent_and_never_picks_a_special_token(small_qwen2_vl: Path) -> None:
    import mlx.core as mx
    from mlx_vlm.utils import load

    config = json.loads((small_qwen2_vl / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(small_qwen2_vl / "tokenizer.json"))
    # mlx-vlm builds the embedding from the config's size: the tokenizer's, the real model's.
    assert config["vocab_size"] == config["text_config"]["vocab_size"] == tokenizer.get_vocab_size() == VOCAB_SIZE
    assert config["vision_config"]["hidden_size"] == config["hidden_size"] == SMALL_QWEN2_VL.hidden_size
    never = set(never_sampled_ids(small_qwen2_vl / "tokenizer.json"))
    vision = {config[key] for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    special = {tokenizer.token_to_id(token) for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert len(vision | special) == 7 and vision | special | {config["eos_token_id"]} <= never
    weights = mx.load(str(small_qwen2_vl / "model.safetensors"))
    embedding = weights["language_model.model.embed_tokens.weight"]
    # Tied: the embedding is the output layer, whose rows of those tokens are zero.
    assert "language_model.lm_head.weight" not in weights and config["tie_word_embeddings"]
    assert embedding.dtype == mx.bfloat16 and embedding.shape == (VOCAB_SIZE, SMALL_QWEN2_VL.hidden_size)
    assert not mx.any(embedding[mx.array(sorted(never))]).item()
    assert mx.any(embedding[mx.array(sorted(set(range(VOCAB_SIZE)) - never))]).item()

    loaded = load(str(small_qwen2_vl))
    model, processor = loaded
    prompt = image_prompt(processor.tokenizer)
    assert prompt.startswith(f"<|im_start|>user\n{VISION_START}{IMAGE_PAD}{VISION_END}What is in this picture?<|im_end|>\n")
    image = noise_image(1, (448, 448))
    ids = [int(token) for token in processor(text=prompt, images=[image])["input_ids"].reshape(-1)]
    assert ids.count(config["image_token_id"]) == IMAGE_TOKENS_448
    # Greedy text runs to max_tokens in visible text: never the end of a turn, a special token or a non-text byte.
    answer = greedy_tokens(loaded, image, max_tokens=12)
    assert len(answer) == 12 and not set(answer) & never
    assert processor.tokenizer.decode(answer).isprintable()
