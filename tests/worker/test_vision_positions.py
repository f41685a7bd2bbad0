"""Multimodal rotary positions (a tiny Qwen2-VL): the engines' text decoding after an image gives what the model
gives at its true positions, alone, in a batch, and from the prompt cache."""

from __future__ import annotations

import io
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from mlxtrio._protocol import ChatMessage, ContentPart, Generate, ImageInput, SamplingParams
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._mlx_lm import load_tokenizer
from mlxtrio.worker._sequential import SequentialEngine
from mlxtrio.worker._vision import Vision, load_vision

TOKENS = 12


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def request(request_id: int, seeds: tuple[int, ...], text: str = "what is it?", *, history: tuple[ChatMessage, ...] = ()) -> Generate:
    images = tuple(ImageInput(png(seed), f"messages[0].content[{index}]") for index, seed in enumerate(seeds))
    parts = (*(ContentPart(image=index) for index in range(len(seeds))), ContentPart(text=text))
    first = ChatMessage("user", text, parts=parts if seeds else ())
    return Generate(request_id, SamplingParams(max_tokens=TOKENS, temperature=0.0), messages=(first, *history), images=images)


@pytest.fixture(scope="module")
def qwen(tiny_qwen2_vl: Path):  # noqa: ANN201 - (VisionParts, tokenizer, Vision)
    parts = load_vision(tiny_qwen2_vl)
    tokenizer = load_tokenizer(tiny_qwen2_vl, eos_token_ids=parts.config.get("eos_token_id"))
    return parts, tokenizer, Vision(parts, max_pixels=1 << 20, prefill_step_size=7)


def engine(qwen, kind: type, *, prompt_cache_bytes: int = 0):  # noqa: ANN001, ANN201
    parts, tokenizer, vision = qwen
    options = dict(context_length=4096, prompt_cache_bytes=prompt_cache_bytes, progress=lambda: None, vision=vision)
    if kind is BatchEngine:
        options.update(decode_concurrency=8, prefill_batch_size=8, prefill_step_size=7, prefill_bucket=0, first_tokens_always_early=True)
    else:
        options.update(prefill_step_size=7)
    return kind(parts.text_model, tokenizer, **options)


def run(engine, requests: list[Generate]) -> dict[int, list[int]]:  # noqa: ANN001
    texts: dict[int, str] = {}
    for each in requests:
        engine.admit(each)
    while engine.active:
        deltas, failures = engine.step()
        engine.settle()
        assert not failures
        for delta in deltas:
            texts[delta.request_id] = texts.get(delta.request_id, "") + delta.text
    return texts


def reference(qwen, each: Generate) -> str:  # noqa: ANN001
    """Greedy text from mlx-vlm's own language model at the true multimodal positions, token after token."""
    parts, tokenizer, vision = qwen
    from mlxtrio.worker._prompt import PromptTokens

    prompt = PromptTokens(tokenizer, context_length=4096, vision=vision)(each)
    model = parts.model
    ids = mx.array(list(prompt))[None]
    arrays = {name: mx.array(value) for name, value in prompt.arrays.items()}
    features = model.get_input_embeddings(ids, arrays.pop("pixel_values"), **arrays)
    positions, deltas = model.language_model.get_rope_index(ids, arrays["image_grid_thw"])
    assert int(deltas.reshape(-1)[0].item()) < 0, "the test image must shift the text's positions"
    cache = [layer for layer in __import__("mlx_lm").models.cache.make_prompt_cache(parts.text_model)]
    logits = model.language_model(ids, inputs_embeds=features.inputs_embeds, cache=cache, position_ids=positions).logits
    out = []
    position = int(positions.max().item()) + 1
    for _ in range(TOKENS):
        token = int(mx.argmax(logits[0, -1]).item())
        if token in tokenizer.eos_token_ids:
            break
        out.append(token)
        at = mx.array([[[position]]] * 3)
        logits = model.language_model(mx.array([[token]]), cache=cache, position_ids=at).logits
        position += 1
    return tokenizer.decode(out)


@pytest.mark.parametrize("kind", [BatchEngine, SequentialEngine])
def test_text_after_an_image_decodes_as_at_its_true_positions(qwen, kind: type) -> None:
    requests = [request(1, (1,)), request(2, (2,)), request(3, (1, 2))]
    expected = [reference(qwen, each) for each in requests]
    assert len(set(expected)) == 3
    alone = [run(engine(qwen, kind), [each])[each.request_id] for each in requests]
    assert alone == expected
    text_only = request(4, ())
    together = run(engine(qwen, kind), [*requests, text_only])
    assert [together[each.request_id] for each in requests] == expected
    assert together[4] == run(engine(qwen, kind), [text_only])[4]


def test_a_kept_image_serves_the_next_turn_and_a_text_prefix_serves_an_image_prompt(qwen) -> None:
    cached = engine(qwen, BatchEngine, prompt_cache_bytes=1 << 26)
    first = request(1, (3,))
    answer = run(cached, [first])[1]
    follow = (ChatMessage("assistant", answer), ChatMessage("user", "and then?"))
    second = request(2, (3,), history=follow)
    assert run(cached, [second])[2] == reference(qwen, second)
    # A text-only prompt's cache (plain positions) in front of an image: the same as computed afresh.
    prefix = request(3, (), "a shared opening")
    run(cached, [prefix])
    after = Generate(4, prefix.params, messages=(ChatMessage("user", "a shared opening"), ChatMessage("user", "x", parts=(ContentPart(image=0), ContentPart(text="x")))), images=(ImageInput(png(4), "messages[1].content[0]"),))
    assert run(cached, [after])[4] == reference(qwen, after)
    # The first image's kept cache is at its true positions: a prompt with it and another image after it.
    both = request(5, (3, 5))
    assert run(cached, [both])[5] == reference(qwen, both)


def test_a_conversation_s_kept_keys_are_not_turned_to_and_fro_at_every_turn(qwen, monkeypatch) -> None:  # noqa: ANN001
    """Keys in half precision lose a little at each turn: the next turn of a conversation with the same image
    takes the kept cache as it is, turned already, and its answer is still the model's at its true positions."""
    from mlxtrio.worker._vision import _positions

    turns: list[int] = []
    original = _positions.turn_keys

    def counted(cache, model, by: int) -> None:  # noqa: ANN001
        if by:
            turns.append(by)
        original(cache, model, by)

    monkeypatch.setattr(_positions, "turn_keys", counted)
    cached = engine(qwen, BatchEngine, prompt_cache_bytes=1 << 26)
    history: tuple[ChatMessage, ...] = ()
    for turn in range(4):
        each = request(turn + 1, (3,), history=history)
        answer = run(cached, [each])[turn + 1]
        assert answer == reference(qwen, each)
        history = (*history, ChatMessage("assistant", answer), ChatMessage("user", f"and {turn}?"))
    # Once, after the first prefill; never again.
    assert len(turns) == 1
