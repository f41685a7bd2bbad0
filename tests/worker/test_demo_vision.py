"""The built-in ``demo-vision`` model: a tiny LLaVA that mlx-vlm loads offline, whose answers depend on the image.

It stands in for a real vision model in every test of the image path, so it
must load through mlx-vlm's own loader (model and processor), keep the demo's
printable text (``<image>`` is never written), and answer different images
differently: a model that ignored its image would let a worker that drops
images pass every test.
"""

from __future__ import annotations

import json
import os
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlxtrio.worker._demo import build_demo_model, never_sampled_ids
from mlxtrio.worker._vision._demo import (
    DEMO_VISION_VERSION,
    IMAGE_TOKEN,
    IMAGE_TOKENS_PER_IMAGE,
    build_demo_vision_model,
    demo_vision_model_path,
    ensure_demo_vision_model,
)

from .vision_models import (
    MIXED_PARTS,
    QUESTION,
    greedy_tokens,
    image_prompt,
    mixed_parts_rendered,
    noise_image,
    red_image,
)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return ensure_demo_vision_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def loaded(directory):
    from mlx_vlm.utils import load

    return load(str(directory))


def _greedy(loaded, image, question: str = QUESTION) -> list[int]:
    return greedy_tokens(loaded, image, question, max_tokens=24)


def test_mlx_vlm_loads_it_offline_as_llava(directory, loaded):
    from mlx_vlm.models.llava.processing_llava import LlavaProcessor

    model, processor = loaded
    tokenizer = processor.tokenizer
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "llava" and config["mlxtrio_demo_vision"] == DEMO_VISION_VERSION
    assert isinstance(processor, LlavaProcessor)
    assert model.config.text_config.vocab_size == config["text_config"]["vocab_size"] == len(tokenizer)
    assert model.config.image_token_index == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == len(tokenizer) - 1
    assert tokenizer.convert_tokens_to_ids("<|end|>") == config["eos_token_id"]
    # Each <image> becomes one token per patch, as many as the vision tower gives features.
    inputs = processor(text=image_prompt(tokenizer), images=[red_image()])
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(model.config.image_token_index) == IMAGE_TOKENS_PER_IMAGE == 16
    assert inputs["pixel_values"].shape == (1, 3, 56, 56)


def test_the_template_renders_content_parts_in_order(directory, loaded):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tokenizer = loaded[1].tokenizer
    rendered = tokenizer.apply_chat_template(MIXED_PARTS, tokenize=False, add_generation_prompt=True)
    assert rendered == mixed_parts_rendered(IMAGE_TOKEN)
    # The demo's tools and thinking, as mlx-lm recognises them.
    wrapper = load_tokenizer(directory)
    assert wrapper.has_tool_calling and wrapper.has_thinking
    assert (wrapper.think_start, wrapper.tool_call_start) == ("<think>", "<tool_call>")
    tools = [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
    with_tools = tokenizer.apply_chat_template(
        MIXED_PARTS, tools=tools, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert "<tool_call>" in with_tools and '"name": "look"' in with_tools and with_tools.endswith("<|assistant|><think>\n")


def test_image_token_is_never_sampled(directory, loaded):
    model, processor = loaded
    tokenizer = processor.tokenizer
    never = never_sampled_ids(directory / "tokenizer.json", keep=(tokenizer.convert_tokens_to_ids("<|end|>"),))
    assert model.config.image_token_index in never
    allowed = np.array(sorted(set(range(len(tokenizer))) - set(never)))
    for image in (red_image(), noise_image(1)):
        inputs = processor(text=image_prompt(tokenizer), images=[image])
        embeddings = model.get_input_embeddings(inputs["input_ids"], inputs["pixel_values"]).inputs_embeds
        logits = np.array(model.language_model(inputs["input_ids"], inputs_embeds=embeddings).logits[0])
        # At every position, image ones included: far below every other token's, as the demo's are.
        gap = logits[:, allowed].min(axis=1) - logits[:, never].max(axis=1)
        assert gap.min() > 60, gap.min()


def test_the_image_steers_the_answer(loaded):
    red, noise, other_noise = _greedy(loaded, red_image()), _greedy(loaded, noise_image(1)), _greedy(loaded, noise_image(2))
    assert red != noise and noise != other_noise and red != other_noise
    assert _greedy(loaded, red_image()) == red
    for tokens in (red, noise, other_noise, _greedy(loaded, noise_image(1), "Describe it.")):
        assert len(tokens) == 24 and len(set(tokens)) >= 8, tokens


def test_built_once_atomically_and_deterministically(tmp_path, directory):
    cache = tmp_path / "cache"
    built = ensure_demo_vision_model(cache)
    assert built == demo_vision_model_path(cache) and built.name == f"demo-vision-v{DEMO_VISION_VERSION}"
    # Nothing half-built is left beside it.
    assert [path.name for path in built.parent.iterdir()] == [built.name]
    files = sorted(path.name for path in built.iterdir())
    assert files == sorted(path.name for path in directory.iterdir())
    for name in files:
        assert (built / name).read_bytes() == (directory / name).read_bytes(), name
    # Built once: a second call finds it.
    stamp = os.stat(built / "model.safetensors").st_mtime_ns
    assert ensure_demo_vision_model(cache) == built
    assert os.stat(built / "model.safetensors").st_mtime_ns == stamp
    # Another version in a directory named by the caller is replaced; another model there is not.
    named = tmp_path / "named"
    shutil.copytree(built, named)
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps(dict(config, mlxtrio_demo_vision=DEMO_VISION_VERSION - 1)))
    assert build_demo_vision_model(named) == named
    assert (named / "config.json").read_bytes() == (built / "config.json").read_bytes()
    text_demo = build_demo_model(tmp_path / "text-demo")
    with pytest.raises(OSError):
        build_demo_vision_model(text_demo)
    assert "mlxtrio_demo_vision" not in json.loads((text_demo / "config.json").read_text())


def test_text_only_prompts_still_answer(loaded):
    from mlx_vlm import stream_generate

    model, processor = loaded
    prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    ids = mx.array([processor.tokenizer.encode(prompt)])
    *_, last = stream_generate(model, processor, prompt, input_ids=ids, max_tokens=24, temperature=0.0)
    assert len(last.token_ids) == 24 and len(set(last.token_ids)) >= 8, last.token_ids
