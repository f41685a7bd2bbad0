"""Images on every surface: what the orchestrator refuses (count, size, format, source) before any 200 and before the
worker, each surface in its own error shape, and how the accepted ones reach the Generate.

The worker's side (decoding, a text model's refusal, the answers of ``demo-vision``) is tested with the worker.
"""

from __future__ import annotations

import base64
import io
import json

import anthropic
import httpx
import msgspec
import openai
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mlxtrio import ErrorKind, ServerError
from mlxtrio import _protocol as p
from mlxtrio.api._common import RequestLimits
from mlxtrio.api._errors import status_of
from mlxtrio.api import _images
from mlxtrio.api._images import ImageSource, ImageSources, load_images
from mlxtrio.api.anthropic._schemas import MessagesRequest
from mlxtrio.api.anthropic._serving import generation_request as anthropic_request
from mlxtrio.api.openai._schemas import ChatCompletionRequest
from mlxtrio.api.openai._serving_chat import generation_request as chat_request
from mlxtrio.api.responses._items import chat_messages, input_items
from mlxtrio.api.responses._schemas import InputItem

from ..helpers import bounded, make_config, status

MAX_BYTES = 2000
PER_REQUEST = 2
LIMITS = RequestLimits(max_tokens=100, max_choices=16, grammar_max_bytes=65536)


def _png(size: tuple[int, int] = (2, 2)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
# Bytes that start as a PNG does, past the byte limit.
LARGE_URL = "data:image/png;base64," + base64.b64encode(PNG[:8] + bytes(MAX_BYTES)).decode()


@pytest.fixture
def server_settings() -> dict:
    return {"images_per_request": PER_REQUEST, "image_max_bytes": MAX_BYTES}


def _chat(*urls: str, role: str = "user") -> dict:
    parts = [{"type": "text", "text": "What is this?"}, *({"type": "image_url", "image_url": {"url": url}} for url in urls)]
    return {"model": "demo", "max_tokens": 4, "messages": [{"role": role, "content": parts}]}


def _anthropic_source(url: str) -> dict:
    """A data: URL as Anthropic's base64 source where it splits into one; any other reference as a url source."""
    header, _, data = url.partition(",")
    if url.startswith("data:") and header.endswith(";base64"):
        return {"type": "base64", "media_type": header[len("data:") : -len(";base64")], "data": data}
    return {"type": "url", "url": url}


def _messages(*urls: str, role: str = "user") -> dict:
    blocks = [{"type": "text", "text": "What is this?"}, *({"type": "image", "source": _anthropic_source(url)} for url in urls)]
    return {"model": "demo", "max_tokens": 4, "messages": [{"role": role, "content": blocks}]}


def _responses(*urls: str, role: str = "user") -> dict:
    parts = [{"type": "input_text", "text": "What is this?"}, *({"type": "input_image", "image_url": url} for url in urls)]
    return {"model": "demo", "max_output_tokens": 16, "input": [{"role": role, "content": parts}]}


# Each surface: its path, how it puts images in a request, and how it names the first image's part.
SURFACES = {
    "chat": ("/v1/chat/completions", _chat, "messages[0].content[{}]"),
    "anthropic": ("/v1/messages", _messages, "messages.0.content.{}"),
    "anthropic_count": ("/v1/messages/count_tokens", _messages, "messages.0.content.{}"),
    "responses": ("/v1/responses", _responses, "input[0].content[{}]"),
    "responses_count": ("/v1/responses/input_tokens", _responses, "input[0].content[{}]"),
}

# An image reference, the status it gets and what the error says.
REFUSED = [
    ("http://example.com/cat.png", 400, "MLX_IMAGE_FETCH=1"),
    ("https://example.com/cat.png", 400, "send the image as a data: URL"),
    ("file:///etc/passwd", 400, "local files are never opened"),
    ("/etc/passwd", 400, "local files are never opened"),
    ("ftp://example.com/cat.png", 400, "a data: URL (base64) or an http(s) URL"),
    ("", 400, "empty"),
    ("data:image/png;base64,@@@@", 400, "not base64"),
    ("data:image/png;base64," + base64.b64encode(PNG).decode()[:-1], 400, "not base64"),
    ("data:image/png;base64,iVBO RwOK", 400, "not base64"),
    ("data:image/png;base64,", 400, "empty"),
    ("data:image/png," + PNG.hex(), 400, "base64"),
    ("data:text/plain;base64," + base64.b64encode(PNG).decode(), 400, "not an image's"),
    ("data:image/png;base64," + base64.b64encode(b"GIF86a, almost a GIF").decode(), 400, "not a PNG, JPEG, WebP or GIF image"),
    ("data:image/svg+xml;base64," + base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode(), 400, "not a PNG, JPEG, WebP or GIF"),
    (LARGE_URL, 413, "at most 2000 (MLX_IMAGE_MAX_BYTES)"),
]


def _said(surface: str, response: httpx.Response, openapi) -> tuple[str, str | None]:  # noqa: ANN001
    """The error's message and param, the body checked as its surface's shape."""
    body = response.json()
    if surface.startswith("anthropic"):
        kind = "request_too_large" if response.status_code == 413 else "invalid_request_error"
        assert body["type"] == "error" and body["error"]["type"] == kind and body["request_id"], body
        return body["error"]["message"], None
    openapi.validate(body, "ErrorResponse")
    assert body["error"]["type"] == "invalid_request_error", body
    return body["error"]["message"], body["error"]["param"]


async def _answers(client: httpx.AsyncClient, surface: str) -> None:
    """A request without images is answered as before."""
    path, build, _ = SURFACES[surface]
    body = build()
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("surface", SURFACES)
@bounded(120)
async def test_every_bad_image_is_refused_naming_its_part(client, admin, openapi, surface):
    path, build, where = SURFACES[surface]
    for url, code, says in REFUSED:
        response = await client.post(path, json=build(url))
        assert response.status_code == code, (url[:60], response.text)
        message, param = _said(surface, response, openapi)
        assert says in message and message.startswith(where.format(1) + ": "), (url[:60], message)
        assert param in (None, where.format(1)), param
    # More than MLX_IMAGES_PER_REQUEST: the first one past it is named, before any of them is looked at.
    response = await client.post(path, json=build(PNG_URL, "file:///etc/passwd", "not even a URL"))
    assert response.status_code == 400
    message, param = _said(surface, response, openapi)
    assert message.startswith(where.format(3) + ": ") and "at most 2 images per request (MLX_IMAGES_PER_REQUEST)" in message, message
    assert param in (None, where.format(3))
    # None of it went to a worker.
    assert (await status(admin))["intake"]["handed_over"] == 0
    await _answers(client, surface)


@bounded(120)
async def test_the_official_clients_see_the_refusals_in_their_own_terms(server, client):
    """OpenAI's SDK: a BadRequestError naming the part, an APIStatusError 413; Anthropic's: its BadRequestError."""
    async with openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="unused", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.chat.completions.create(**_chat("https://example.com/cat.png"))
        assert refused.value.param == "messages[0].content[1]" and "MLX_IMAGE_FETCH" in refused.value.message
        with pytest.raises(openai.APIStatusError) as too_large:
            await sdk.chat.completions.create(**_chat(LARGE_URL))
        assert too_large.value.status_code == 413 and "MLX_IMAGE_MAX_BYTES" in too_large.value.message
        with pytest.raises(openai.BadRequestError) as by_file:
            await sdk.responses.create(
                model="demo", input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}]}]
            )
        assert by_file.value.param == "input[0].content[0].file_id"
    async with anthropic.AsyncAnthropic(base_url=server.openai_url, api_key="unused", max_retries=0) as sdk:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await sdk.messages.create(**_messages("data:image/png;base64," + base64.b64encode(b"just text").decode()))
        assert "messages.0.content.1: not a PNG, JPEG, WebP or GIF image" in refused.value.message
        with pytest.raises(anthropic.BadRequestError) as by_file:
            await sdk.messages.count_tokens(
                model="demo", messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]
            )
        assert "messages.0.content.0.source: images by file_id are not supported" in by_file.value.message
    await _answers(client, "chat")


# Where each surface takes images only in user messages (and Anthropic's tool results), and how it names the part.
MISPLACED = [
    ("/v1/chat/completions", _chat(PNG_URL, role="system"), "messages[0].content[1]", "only allowed in user messages"),
    ("/v1/chat/completions", {**_chat(), "messages": [{"role": "user", "content": "hi"}, _chat(PNG_URL, role="assistant")["messages"][0]]},
     "messages[1].content[1]", "only allowed in user messages"),
    ("/v1/chat/completions", {**_chat(), "messages": [{"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": PNG_URL}]}]},
     "messages[0].content[0]", "only allowed in user messages"),
    ("/v1/chat/completions", {**_chat(), "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL, "detail": "ultra"}}]}]},
     "messages[0].content[0].image_url.detail", "auto, low, high"),
    ("/v1/chat/completions", {**_chat(), "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].image_url", "needs"),
    ("/v1/chat/completions", {**_chat(), "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]", "text (with its text) or image_url"),
    ("/v1/messages", {**_messages(), "messages": [{"role": "user", "content": "hi"}, _messages(PNG_URL, role="assistant")["messages"][0],
                                                  {"role": "user", "content": "and?"}]}, None, "messages.1.content.1: images belong in user messages"),
    ("/v1/responses", _responses(PNG_URL, role="system"), "input[0].content[1]", "user messages only"),
    ("/v1/responses", {**_responses(), "input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": PNG_URL}]}]},
     "input[0].output[0]", "user messages only"),
    ("/v1/responses", {**_responses(), "input": [{"role": "user", "content": [{"type": "input_image", "image_url": PNG_URL, "detail": "huge"}]}]},
     "input[0].content[0].detail", "auto, low, high"),
    ("/v1/responses", {**_responses(), "input": [{"role": "user", "content": [{"type": "input_image", "detail": "auto"}]}]},
     "input[0].content[0].image_url", "needs its image_url"),
]


@pytest.mark.parametrize(("path", "body", "param", "says"), MISPLACED)
@bounded(60)
async def test_images_where_a_surface_takes_none_are_refused(client, openapi, path, body, param, says):
    response = await client.post(path, json=body)
    assert response.status_code == 400, response.text
    surface = "anthropic" if path == "/v1/messages" else "chat"
    message, named = _said(surface, response, openapi)
    assert says in message and named == param, (message, named)


def _chat_generation(body: dict):  # noqa: ANN202
    request = msgspec.json.decode(json.dumps(body), type=ChatCompletionRequest)
    request.validate(LIMITS)
    return chat_request(request, LIMITS)


def test_chat_parts_keep_their_order_and_name_their_images():
    other = "data:image/jpeg;base64,/9j/4AAQ"
    generation = _chat_generation(
        {
            "model": "demo",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "image_url", "image_url": PNG_URL}, {"type": "text", "text": "and"},
                                             {"type": "image_url", "image_url": {"url": other, "detail": "low"}}]},
                {"role": "user", "content": [{"type": "text", "text": "plain"}, {"type": "text", "text": " text"}]},
            ],
        }
    )
    system, pictured, plain = generation.messages
    assert system == p.ChatMessage("system", "Be brief.") and plain == p.ChatMessage("user", "plain text")
    assert pictured.content == "and" and pictured.parts == (p.ContentPart(image=0), p.ContentPart(text="and"), p.ContentPart(image=1))
    assert generation.images == (
        ImageSource(where="messages[1].content[0]", url=PNG_URL),
        ImageSource(where="messages[1].content[2]", url=other, detail="low"),
    )


def test_anthropic_images_in_tool_results_go_to_the_tool_message():
    """Claude Code sends a screenshot as a tool result's image: the tool message holds it, in order."""
    screenshot = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body = {
        "model": "demo",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "Take a screenshot"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": [{"type": "text", "text": "blurred"}, screenshot]},
                {"type": "text", "text": "What is on it?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ]},
        ],
    }
    request = msgspec.json.decode(json.dumps(body), type=MessagesRequest)
    request.validate(LIMITS)
    generation = anthropic_request(request, LIMITS)
    tool, user = generation.messages[2:]
    assert (tool.role, tool.content, tool.tool_call_id) == ("tool", "Error: blurred", "toolu_1")
    assert tool.parts == (p.ContentPart(text="Error: blurred"), p.ContentPart(image=0))
    assert user == p.ChatMessage("user", "What is on it?", parts=(p.ContentPart(text="What is on it?"), p.ContentPart(image=1)))
    assert generation.images == (
        ImageSource(where="messages.2.content.0.content.1", url="iVBORw0KGgo=", media_type="image/png"),
        ImageSource(where="messages.2.content.2", url="https://example.com/a.png"),
    )


def test_responses_input_images_are_kept_as_sent_and_replayed_from_the_history():
    """The stored input items hold the image as sent, so that a chain continued from them gives the model the image again;
    an earlier turn's image is named by previous_response_id, this request's by its input."""
    given = [{"role": "user", "content": [{"type": "input_text", "text": "Look"}, {"type": "input_image", "image_url": PNG_URL, "detail": "original"}]}]
    items = input_items(msgspec.json.decode(json.dumps(given), type=list[InputItem]))
    assert items[0]["content"][1] == {"type": "input_image", "image_url": PNG_URL, "file_id": None, "detail": "original"}
    history = [*items, {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A red square."}], "status": "completed"}]
    now = input_items(msgspec.json.decode(json.dumps([{"role": "user", "content": [{"type": "input_image", "image_url": PNG_URL}]}]), type=list[InputItem]))
    sources = ImageSources()
    messages = chat_messages("Be brief.", json.loads(json.dumps(history + now)), sources=sources, earlier=len(history))
    assert [message.role for message in messages] == ["system", "user", "assistant", "user"]
    assert messages[1].content == "Look" and messages[1].parts == (p.ContentPart(text="Look"), p.ContentPart(image=0))
    assert messages[3].parts == (p.ContentPart(image=1),)
    assert sources.found == [
        ImageSource(where="previous_response_id", url=PNG_URL, detail="high"),
        ImageSource(where="input[0].content[0]", url=PNG_URL, detail="auto"),
    ]


async def test_loaded_images_are_the_bytes_as_sent(tmp_path):
    config = make_config(tmp_path, tmp_path, image_max_bytes=MAX_BYTES, images_per_request=PER_REQUEST)
    webp = b"RIFF\x10\x00\x00\x00WEBPVP8 "
    images = await load_images(
        [ImageSource(where="a", url=PNG_URL, detail="low"), ImageSource(where="b", url=base64.b64encode(webp).decode(), media_type="image/webp")], config
    )
    assert images == (p.ImageInput(PNG, "a", "low"), p.ImageInput(webp, "b", "auto"))
    # Exactly the limit is taken; a byte past it is not, and is refused from the base64's length before it is decoded.
    exact = PNG[:8] + bytes(MAX_BYTES - 8)
    assert (await load_images([ImageSource(where="c", url=base64.b64encode(exact).decode(), media_type="image/png")], config))[0].data == exact
    with pytest.raises(ServerError) as refused:
        await load_images([ImageSource(where="d", url="A" * (MAX_BYTES // 3 * 4 + 8), media_type="image/png")], config)
    assert status_of(refused.value) == 413 and refused.value.param == "d"


async def test_fetched_images_are_checked_as_sent_ones_and_fetched_together(tmp_path, monkeypatch):
    """With MLX_IMAGE_FETCH on, URLs go to the fetcher, all at once; what comes back is sniffed and held to the byte
    limit as a data: URL is, and the first problem in the request's order is the error."""
    config = make_config(tmp_path, tmp_path, image_max_bytes=MAX_BYTES, images_per_request=4, image_fetch=True, image_fetch_timeout=3.0)
    bodies = {"https://a.example/ok.png": PNG, "HTTPS://a.example/ok.png": PNG, "https://a.example/page.html": b"<html>", "https://a.example/huge.png": PNG + bytes(MAX_BYTES)}
    asked, both_waiting = [], trio.Event()

    async def fetch_image(url: str, *, max_bytes: int, timeout: float, where: str) -> bytes:
        assert (max_bytes, timeout) == (MAX_BYTES, 3.0)
        asked.append(where)
        if len(asked) == 2:
            both_waiting.set()
        await both_waiting.wait()
        if url not in bodies:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"{where}: the fetch failed", param=where)
        return bodies[url]

    monkeypatch.setattr(_images, "fetch_image", fetch_image)

    def source(where: str, url: str) -> ImageSource:
        return ImageSource(where=where, url=url)

    images = await load_images([source("a", "https://a.example/ok.png"), source("b", PNG_URL), source("c", "HTTPS://a.example/ok.png")], config)
    assert [image.data for image in images] == [PNG, PNG, PNG] and sorted(asked) == ["a", "c"]
    for url, code, says in [("https://a.example/page.html", 400, "not a PNG"), ("https://a.example/huge.png", 413, "MLX_IMAGE_MAX_BYTES")]:
        asked.clear()
        with pytest.raises(ServerError) as refused:
            await load_images([source("first", "https://a.example/ok.png"), source("second", url)], config)
        assert status_of(refused.value) == code and refused.value.param == "second" and says in refused.value.message
    asked.clear()
    with pytest.raises(ServerError) as refused:
        await load_images([source("first", "https://a.example/gone.png"), source("second", "https://a.example/page.html")], config)
    assert refused.value.param == "first"
    # A bad data: URL is refused before anything is fetched.
    asked.clear()
    with pytest.raises(ServerError) as refused:
        await load_images([source("first", "https://a.example/ok.png"), source("second", "data:image/png;base64,@")], config)
    assert refused.value.param == "second" and asked == []


_B64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=64)
_DATA_URLS = st.one_of(
    st.text(max_size=80),
    st.builds(lambda prefix, payload: prefix + payload, st.sampled_from(["data:", "DATA:image/png;base64,", "data:image/png;base64,", "data:;base64,",
                                                                        "data:image/;base64,", "data:image/png;charset=x;base64,", "data:,", "data:image/png;base64"]),
              st.one_of(_B64, st.text(max_size=40), st.builds(lambda n: "A" * n, st.integers(0, 4 * MAX_BYTES)))),
    st.builds(lambda data: "data:image/gif;base64," + base64.b64encode(data).decode(), st.binary(max_size=3 * MAX_BYTES)),
    st.builds(lambda data: "data:image/png;base64," + base64.b64encode(PNG[:4] + data).decode(), st.binary(max_size=64)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=_DATA_URLS, media_type=st.one_of(st.none(), st.sampled_from(["image/png", "text/html", ""])))
def test_any_image_reference_is_taken_or_refused_as_a_4xx(tmp_path, url, media_type):
    config = make_config(tmp_path, tmp_path, image_max_bytes=MAX_BYTES, images_per_request=PER_REQUEST)

    async def load() -> None:
        try:
            images = await load_images([ImageSource(where="x", url=url, media_type=media_type)], config)
        except ServerError as exc:
            assert status_of(exc) in (400, 413) and exc.param == "x" and exc.message.startswith("x: ")
        else:
            assert len(images[0].data) <= MAX_BYTES

    trio.run(load)


@bounded(120)
async def test_junk_data_urls_through_the_server_are_4xx(client):
    junk = ["data:", "data:image/png;base64,====", "data:image/png;base64,A", "data:image/png;;;;base64,AAAA", "data:image/png;base64,\u00e9\u00e9\u00e9\u00e9",
            "data:image/png;base64," + "A" * 3000, "DaTa:ImAgE/PnG;BaSe64,@@", "data:" + "x" * 10000]
    for url in junk:
        for path, build, _ in SURFACES.values():
            response = await client.post(path, json=build(url))
            assert 400 <= response.status_code < 500, (path, url[:40], response.text)
    await _answers(client, "responses")


def _noise_png(seed: int) -> bytes:
    """An image the demo's answers follow (a flat one would look like any other to its random weights)."""
    pixels = bytes((seed * 97 + index * 31) % 256 for index in range(32 * 32 * 3))
    out = io.BytesIO()
    Image.frombytes("RGB", (32, 32), pixels).save(out, format="PNG")
    return out.getvalue()


@bounded(180)
async def test_a_screenshot_in_a_tool_result_reaches_the_vision_model(server, client):
    """Claude Code's shape: the tool's screenshot is counted in the prompt and steers the answer."""
    shots = [base64.b64encode(_noise_png(seed)).decode() for seed in (1, 2)]

    def turn(shot: str | None) -> list[dict]:
        result = [{"type": "text", "text": "Done."}]
        if shot is not None:
            result.append({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": shot}})
        return [
            {"role": "user", "content": "Take a screenshot"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result}]},
        ]

    tools = [{"name": "screenshot", "input_schema": {"type": "object", "properties": {}}}]
    async with anthropic.AsyncAnthropic(base_url=server.openai_url, api_key="unused", max_retries=0) as sdk:
        none = {"type": "none"}
        counts = [
            (await sdk.messages.count_tokens(model="demo-vision", messages=turn(shot), tools=tools, tool_choice=none)).input_tokens for shot in (None, *shots)
        ]
        assert counts[1] == counts[2] > counts[0], counts
        answers = [
            await sdk.messages.create(model="demo-vision", max_tokens=12, messages=turn(shot), tools=tools, tool_choice=none, extra_body={"temperature": 0})
            for shot in (shots[0], shots[1], shots[0])
        ]
    texts = ["".join(block.text for block in answer.content if block.type == "text") for answer in answers]
    assert texts[0] == texts[2] != texts[1], texts
    assert answers[0].usage.input_tokens + (answers[0].usage.cache_read_input_tokens or 0) == counts[1]


@bounded(180)
async def test_a_stored_response_replays_its_images_in_a_chain(client):
    """input_items lists the image as sent; previous_response_id gives the model the image again, as the whole
    conversation sent anew would."""
    image = {"type": "input_image", "image_url": "data:image/png;base64," + base64.b64encode(_noise_png(3)).decode(), "detail": "auto"}
    look = {"role": "user", "content": [{"type": "input_text", "text": "Look:"}, image]}
    first = await client.post("/v1/responses", json={"model": "demo-vision", "input": [look], "max_output_tokens": 16, "temperature": 0})
    assert first.status_code == 200, first.text
    stored = first.json()
    listed = (await client.get(f"/v1/responses/{stored['id']}/input_items")).json()["data"]
    assert listed[0]["content"] == [{"type": "input_text", "text": "Look:"}, {**image, "file_id": None}]

    async def count(**fields: object) -> int:
        response = await client.post("/v1/responses/input_tokens", json={"model": "demo-vision", **fields})
        assert response.status_code == 200, response.text
        return response.json()["input_tokens"]

    follow = {"role": "user", "content": "And now?"}
    answer = [{key: item[key] for key in ("type", "role", "content")} for item in stored["output"] if item["type"] == "message"]
    chained = await count(previous_response_id=stored["id"], input=[follow])
    assert chained == await count(input=[look, *answer, follow])
    assert chained > await count(input=[{**look, "content": look["content"][:1]}, *answer, follow])
    second = await client.post(
        "/v1/responses", json={"model": "demo-vision", "previous_response_id": stored["id"], "input": [follow], "max_output_tokens": 16}
    )
    assert second.status_code == 200 and second.json()["usage"]["input_tokens"] == chained, second.text
