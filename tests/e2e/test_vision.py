"""Images in, end to end: the real server, a real worker running the built-in ``demo-vision`` model (a tiny LLaVA), over HTTP.

The demo's weights are random, so its text is nonsense; but it follows the
image: the same image gives the same greedy text, a different one other
text. That is what shows an image reached the model, that a batch does not
mix requests up, and that the prompt cache never serves one image's prefix
for another.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import time

import numpy as np
import trio
from PIL import Image

from tests.helpers import bounded, worker_entry

MODEL = "demo-vision"
# The demo's image tokens per image (56 x 56 pixels, 14 x 14 patches).
IMAGE_TOKENS = 16


def png(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def user(*parts: dict | str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": part} if isinstance(part, str) else part for part in parts]}


async def chat(client, messages: list[dict], *, model: str = MODEL, max_tokens: int = 12, **extra) -> dict:
    response = await client.post(
        "/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


def text_of(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


@bounded(120)
async def test_the_answer_follows_the_image_and_the_image_counts_in_the_prompt(client):
    question = "what is in this picture?"
    text_only = await chat(client, [user(question)])
    first = await chat(client, [user(image_part(png(1)), question)])
    again = await chat(client, [user(image_part(png(1)), question)])
    other = await chat(client, [user(image_part(png(2)), question)])
    # The placeholder the template writes for the image becomes the image's tokens.
    assert first["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + IMAGE_TOKENS
    assert text_of(first) == text_of(again)
    assert text_of(first) != text_of(other)
    assert text_of(first) != text_of(text_only)


@bounded(180)
async def test_a_batch_of_image_and_text_requests_gives_each_its_own_answer(client):
    conversations = [
        [user(image_part(png(11)), "describe it")],
        [user(image_part(png(12)), "describe it")],
        [user("describe nothing")],
        [user("first", image_part(png(12)), "then", image_part(png(11)))],
    ]
    alone = [text_of(await chat(client, messages, max_tokens=16)) for messages in conversations]
    assert len(set(alone)) == len(alone)
    together: dict[int, str] = {}

    async def one(index: int, messages: list[dict]) -> None:
        together[index] = text_of(await chat(client, messages, max_tokens=16))

    async with trio.open_nursery() as nursery:
        for round_ in range(2):
            for index, messages in enumerate(conversations):
                nursery.start_soon(one, round_ * len(conversations) + index, messages)
    assert [together[index % len(conversations)] for index in range(len(together))] == alone * 2
    assert [together[index] for index in range(len(together))] == alone * 2


@bounded(120)
async def test_several_images_in_order_and_across_turns(client):
    a, b = image_part(png(21)), image_part(png(22))
    one = await chat(client, [user(a, "compare")])
    ab = await chat(client, [user(a, b, "compare")])
    ba = await chat(client, [user(b, a, "compare")])
    assert ab["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"] + IMAGE_TOKENS
    assert text_of(ab) != text_of(ba)
    turns = [user(a, "this one"), {"role": "assistant", "content": "noted"}, user(b, "and this one?")]
    across = await chat(client, turns)
    assert across["usage"]["prompt_tokens"] > 2 * IMAGE_TOKENS


@bounded(120)
async def test_a_stream_with_an_image_gives_the_same_text(client):
    messages = [user(image_part(png(31)), "go on")]
    whole = text_of(await chat(client, messages))
    streamed = []
    async with client.stream(
        "POST", "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 12, "temperature": 0, "stream": True}
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                import json

                for choice in json.loads(line[6:])["choices"]:
                    streamed.append(choice["delta"].get("content") or "")
    assert "".join(streamed) == whole


@bounded(120)
async def test_the_prompt_cache_reuses_a_kept_image_and_never_another(client):
    first_turn = [user("a long enough question about this image", image_part(png(41)), "please answer")]
    first = await chat(client, first_turn)
    second_turn = [*first_turn, {"role": "assistant", "content": text_of(first)}, user("and more?")]
    same = await chat(client, second_turn)
    # The second turn starts from the first's cache: its image and all before it.
    assert same["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1
    changed_turn = [user("a long enough question about this image", image_part(png(42)), "please answer"), *second_turn[1:]]
    changed = await chat(client, changed_turn)
    # The text before the image may come from the cache; the image and what follows it may not.
    before_image = (await chat(client, [user("a long enough question about this image")]))["usage"]["prompt_tokens"]
    assert changed["usage"]["prompt_tokens_details"]["cached_tokens"] < before_image
    fresh = await chat(client, changed_turn)
    assert text_of(changed) == text_of(fresh)
    assert text_of(changed) != text_of(same)


@bounded(120)
async def test_a_large_image_is_resized_not_refused_and_one_past_decoding_is_refused(client):
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(photo, format="JPEG", quality=30)
    answer = await chat(client, [user(image_part(photo.getvalue()), "what?")], model=MODEL)
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")
    response = await client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [user("look", image_part(bomb.getvalue()))], "max_tokens": 4},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[1]" and "9000x9000" in error["message"]
    await chat(client, [user(image_part(png(1)), "still there?")])


@bounded(120)
async def test_refusals_in_the_worker_name_the_part_and_leave_it_serving(client, admin):
    corrupt = b"\x89PNG\r\n\x1a\n" + os.urandom(200)
    response = await client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": [user("see", image_part(corrupt))], "max_tokens": 4}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[0].content[1]"
    await chat(client, [user(image_part(png(1)), "fine?")])
    assert (await worker_entry(admin, MODEL))["restarts"] == 0


@bounded(60)
async def test_a_text_model_refuses_images_without_loading(client, admin):
    response = await client.post(
        "/v1/chat/completions", json={"model": "demo", "messages": [user(image_part(png(1)), "see")], "max_tokens": 4}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[0]" and "does not take images" in error["message"]
    assert (await worker_entry(admin, "demo"))["loads"] == 0
    # A text model that is loaded refuses them in its worker too (a model the catalog could not tell of).
    await chat(client, [user("hello")], model="demo")
    response = await client.post(
        "/v1/chat/completions", json={"model": "demo", "messages": [user(image_part(png(1)), "see")], "max_tokens": 4}
    )
    assert response.status_code == 400 and "does not take images" in response.json()["error"]["message"]


@bounded(120)
async def test_a_worker_killed_under_an_image_request_fails_it_at_once_and_the_next_gets_a_fresh_worker(client, admin):
    await chat(client, [user(image_part(png(1)), "warm up")])
    request = {"model": MODEL, "messages": [user(image_part(png(2)), "go")], "max_tokens": 4000, "ignore_eos": True, "stream": True}
    errors = []
    async with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content"' in line and not errors:
                os.kill((await worker_entry(admin, MODEL))["pid"], signal.SIGKILL)
                killed_at = time.monotonic()
                errors.append(None)
            if line.startswith("data: {") and '"error"' in line:
                errors.append(line)
                break
    assert time.monotonic() - killed_at < 1.0
    assert "worker_crashed" in errors[-1]
    answer = await chat(client, [user(image_part(png(2)), "again")])
    assert answer["usage"]["prompt_tokens"] > IMAGE_TOKENS
    assert (await worker_entry(admin, MODEL))["restarts"] == 1


@bounded(120)
async def test_every_surface_gives_the_model_the_same_image_prompt(client, server):
    import anthropic
    import openai

    image, question = png(51), "what is it?"
    reference = await chat(client, [user(image_part(image), question)], max_tokens=16)
    encoded = base64.b64encode(image).decode()
    async with anthropic.AsyncAnthropic(base_url=server.openai_url, api_key="unused", max_retries=0) as claude:
        content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": encoded}}, {"type": "text", "text": question}]
        message = await claude.messages.create(
            model=MODEL, max_tokens=16, extra_body={"temperature": 0}, messages=[{"role": "user", "content": content}]
        )
        counted = await claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": content}])
    assert message.content[0].text == text_of(reference)
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == reference["usage"]["prompt_tokens"]
    assert counted.input_tokens == reference["usage"]["prompt_tokens"]
    async with openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="unused", max_retries=0) as sdk:
        response = await sdk.responses.create(
            model=MODEL,
            max_output_tokens=16,
            temperature=0,
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": data_url(image)}, {"type": "input_text", "text": question}]}],
        )
        # A later turn by previous_response_id: the stored chain gives the model its image again.
        follow = await sdk.responses.create(model=MODEL, max_output_tokens=16, temperature=0, previous_response_id=response.id, input="and?")
    assert response.output_text == text_of(reference)
    assert response.usage.input_tokens == reference["usage"]["prompt_tokens"]
    turns = [user(image_part(image), question), {"role": "assistant", "content": response.output_text}, user("and?")]
    assert follow.output_text == text_of(await chat(client, turns, max_tokens=16))


@bounded(60)
async def test_text_that_spells_the_image_placeholder_stays_text(client):
    # Were "<image>" in a message's text the template's placeholder, the prompt would hold two images'
    # places for the one image sent, and forge an image where the client sent text.
    answer = await chat(client, [user(image_part(png(61)), "what is <image> here?")])
    plain = await chat(client, [user(image_part(png(61)), "what is  here?")])
    assert answer["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    text_only = await chat(client, [user("<image>")])
    assert text_only["usage"]["prompt_tokens"] < IMAGE_TOKENS


@bounded(120)
async def test_sampling_logprobs_stop_strings_and_structured_output_work_with_an_image(client):
    import json

    messages = [user(image_part(png(71)), "answer")]
    seeded = [text_of(await chat(client, messages, temperature=1.0, seed=seed, max_tokens=16)) for seed in (7, 7, 8)]
    assert seeded[0] == seeded[1] != seeded[2]
    with_logprobs = await chat(client, messages, logprobs=True, top_logprobs=2)
    entries = with_logprobs["choices"][0]["logprobs"]["content"]
    assert len(entries) == with_logprobs["usage"]["completion_tokens"] and all(len(entry["top_logprobs"]) == 2 for entry in entries)
    greedy = text_of(await chat(client, messages, max_tokens=16))
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 2]
    stopped = await chat(client, messages, max_tokens=16, stop=[stop])
    assert stopped["choices"][0]["finish_reason"] == "stop" and text_of(stopped) == greedy[: greedy.index(stop)]
    schema = {"type": "object", "properties": {"seen": {"type": "boolean"}}, "required": ["seen"], "additionalProperties": False}
    structured = await chat(
        client, messages, max_tokens=40, response_format={"type": "json_schema", "json_schema": {"name": "seen", "schema": schema}}
    )
    assert isinstance(json.loads(text_of(structured))["seen"], bool)


@bounded(120)
async def test_a_stream_goes_on_while_another_request_s_large_images_are_decoded(client):
    # A 5000 x 5000 gradient: a small PNG that takes about a second to decode and resize.
    row = np.linspace(0, 255, 5000).astype(np.uint8)
    large = io.BytesIO()
    Image.fromarray(np.broadcast_to(row[None, :, None], (5000, 5000, 3)).copy()).save(large, format="PNG", compress_level=1)
    request = {"model": MODEL, "messages": [user("go")], "max_tokens": 4000, "ignore_eos": True, "stream": True}
    gaps: list[float] = []
    images_done = trio.Event()

    async def with_images() -> None:
        await chat(client, [user(image_part(large.getvalue()), "what?")], max_tokens=1)
        images_done.set()

    async with trio.open_nursery() as nursery, client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        last = None
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.monotonic()
            if last is None:
                nursery.start_soon(with_images)
            elif not images_done.is_set():
                gaps.append(now - last)
            else:
                break
            last = now
    # Decoded on the worker's loop, the image would have held the stream for as long as that took.
    assert len(gaps) > 10 and max(gaps) < 0.4, max(gaps)
