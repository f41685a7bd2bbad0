"""An image prompt's prefill, a chunk per engine step: the batch decodes between its chunks, and a request's choices
share one prefill."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxtrio._protocol import ChatMessage, ContentPart, Generate, ImageInput, SamplingParams
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._mlx_lm import load_tokenizer
from mlxtrio.worker._sequential import SequentialEngine
from mlxtrio.worker._vision import Vision, load_vision
from mlxtrio.worker._vision._demo import ensure_demo_vision_model

from .vision_models import noise_image

CHUNK = 4


@pytest.fixture(scope="module")
def demo_vision(cache_dir: Path):  # noqa: ANN201 - (VisionParts, tokenizer)
    path = ensure_demo_vision_model(cache_dir)
    parts = load_vision(path)
    return parts, load_tokenizer(path, eos_token_ids=parts.config.get("eos_token_id"))


def engine(demo_vision, kind: type):  # noqa: ANN001, ANN201
    parts, tokenizer = demo_vision
    vision = Vision(parts, max_pixels=1 << 20, prefill_step_size=CHUNK)
    options = dict(context_length=2048, prompt_cache_bytes=0, progress=lambda: None, vision=vision, prefill_step_size=CHUNK)
    if kind is BatchEngine:
        options.update(decode_concurrency=8, prefill_batch_size=8, prefill_bucket=0, first_tokens_always_early=True)
    return kind(parts.text_model, tokenizer, **options)


def png(seed: int) -> bytes:
    import io

    out = io.BytesIO()
    noise_image(seed).save(out, format="PNG")
    return out.getvalue()


def with_image(request_id: int, *, choices: int = 1, max_tokens: int = 6) -> Generate:
    message = ChatMessage("user", "what?", parts=(ContentPart(image=0), ContentPart(text="what?")))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return Generate(request_id, params, messages=(message,), images=(ImageInput(png(3), "messages[0].content[0]"),), choices=choices)


def text(request_id: int, max_tokens: int) -> Generate:
    return Generate(request_id, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True), prompt="once upon a time")


def count_vision_tower_runs(monkeypatch: pytest.MonkeyPatch, demo_vision) -> list[int]:  # noqa: ANN001
    model = demo_vision[0].model
    runs: list[int] = []
    original = model.get_input_embeddings
    monkeypatch.setattr(model, "get_input_embeddings", lambda *args, **kwargs: runs.append(1) or original(*args, **kwargs))
    return runs


@pytest.mark.parametrize("kind", [BatchEngine, SequentialEngine])
def test_the_batch_decodes_between_an_image_prompt_s_chunks(demo_vision, kind: type, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = count_vision_tower_runs(monkeypatch, demo_vision)
    running = engine(demo_vision, kind)
    running.admit(text(1, 200))
    while not any(delta.request_id == 1 for delta in running.step()[0]):
        pass
    prompt_tokens = running.admit(with_image(2))
    assert prompt_tokens > 16 and runs == []  # admitted at once: its prefill waits for the steps
    steps = 0
    while True:
        deltas, failures = running.step()
        assert not failures
        steps += 1
        # The text sequence gets its token in every step the image prompt prefills in (two in the step
        # where it moves into the batch, carrying the token it had sampled alone).
        assert any(delta.request_id == 1 for delta in deltas)
        if any(delta.request_id == 2 for delta in deltas):
            break
    assert runs == [1]
    assert steps >= prompt_tokens // CHUNK


def test_a_request_s_choices_share_one_prefill_and_cancelling_them_stops_it(demo_vision, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = count_vision_tower_runs(monkeypatch, demo_vision)
    running = engine(demo_vision, BatchEngine)
    running.admit(with_image(10, choices=3))
    texts: dict[int, str] = {}
    while running.active:
        deltas, failures = running.step()
        assert not failures
        for delta in deltas:
            texts[delta.request_id] = texts.get(delta.request_id, "") + delta.text
    assert runs == [1]
    assert sorted(texts) == [10, 11, 12] and len(set(texts.values())) == 1 and texts[10]
    running.admit(with_image(20, choices=2))
    running.step()
    assert running.cancel(20) and running.cancel(21) and running.active == 0


@pytest.mark.parametrize("kind", [BatchEngine, SequentialEngine])
def test_a_prefill_that_fails_fails_its_request_only(demo_vision, kind: type, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the vision tower broke")

    running = engine(demo_vision, kind)
    running.admit(text(1, 40))
    monkeypatch.setattr(demo_vision[0].model, "get_input_embeddings", broken)
    running.admit(with_image(2, choices=2))
    failed: dict[int, str] = {}
    finished = []
    while running.active:
        deltas, failures = running.step()
        failed.update((request_id, str(error)) for request_id, error in failures)
        finished.extend(delta.request_id for delta in deltas if delta.finish_reason is not None)
    assert sorted(failed) == [2, 3] and all("the vision tower broke" in message for message in failed.values())
    assert finished == [1] and not running.broken


def test_a_model_whose_image_token_is_not_named_is_refused_at_load(demo_vision) -> None:
    """Images it could neither place nor tell apart in the prompt cache: refused, not served wrong."""
    from types import SimpleNamespace

    from mlxtrio.worker._vision import VisionParts

    parts = demo_vision[0]
    unnamed = VisionParts(SimpleNamespace(config=SimpleNamespace(), language_model=parts.model.language_model), parts.processor, parts.text_model, {})
    with pytest.raises(ValueError, match="names no image token"):
        Vision(unnamed, max_pixels=1 << 20, prefill_step_size=CHUNK)
