"""A vision model with multimodal rotary positions (a tiny Qwen2-VL from a local directory) through the real server."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.e2e.test_vision import chat, image_part, png, text_of, user
from tests.helpers import bounded
from tests.worker.vision_models import QWEN2_VL_VERSION, build_tiny_qwen2_vl


@pytest.fixture
def server_settings(cache_dir: Path) -> dict:
    path = build_tiny_qwen2_vl(cache_dir / "models" / f"tiny-qwen2-vl-v{QWEN2_VL_VERSION}")
    return {"model": str(path)}


@bounded(120)
async def test_a_qwen2_vl_directory_serves_images_batched_beside_text(client, server_settings):
    model = server_settings["model"]
    conversations = [[user(image_part(png(1)), "what?")], [user(image_part(png(2)), "what?")], [user("what?")]]
    alone = [text_of(await chat(client, messages, model=model)) for messages in conversations]
    assert len(set(alone)) == 3
    together: dict[int, str] = {}

    async def one(index: int) -> None:
        together[index] = text_of(await chat(client, conversations[index % 3], model=model))

    async with trio.open_nursery() as nursery:
        for index in range(6):
            nursery.start_soon(one, index)
    assert [together[index] for index in range(6)] == alone * 2
    follow = [*conversations[0], {"role": "assistant", "content": alone[0]}, user("and?")]
    answer = await chat(client, follow, model=model)
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
