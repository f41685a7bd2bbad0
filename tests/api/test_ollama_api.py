"""Ollama's API against the real server and a real worker, driven by the official ``ollama`` Python client.

Answers are read by the client's own types (pydantic); where the client hides
the wire (NDJSON framing, the content type, an error line after the 200), by
raw HTTP.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
from datetime import UTC, datetime

import httpx
import jsonschema
import ollama
import pytest
import trio
from PIL import Image

from mlxtrio.worker._demo import demo_model_path

from ..helpers import bounded, worker_entry

HELLO = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            # The client's Tool type keeps a property's type, description and enum only.
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
KEY = "sk-ollama-test"
NDJSON = "application/x-ndjson"


def _client(server, **options: object) -> ollama.AsyncClient:  # noqa: ANN001
    return ollama.AsyncClient(host=server.openai_url, timeout=60, **options)


def _timings_consistent(final: ollama.ChatResponse | ollama.GenerateResponse, *, eval_count: int | None = None) -> None:
    """Ollama's counts and durations, in nanoseconds: each there, positive, and the total at least their sum."""
    assert final.done is True and final.done_reason in ("stop", "length")
    assert final.prompt_eval_count > 0 and final.eval_count > 0
    if eval_count is not None:
        assert final.eval_count == eval_count
    parts = (final.load_duration, final.prompt_eval_duration, final.eval_duration)
    assert final.load_duration >= 0 and final.prompt_eval_duration > 0 and final.eval_duration > 0
    assert final.total_duration >= sum(parts)
    # Nanoseconds, not seconds or milliseconds: a request on the demo model takes well under a minute and over a microsecond.
    assert 1_000 < final.total_duration < 60 * 10**9


def _ndjson(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith(NDJSON), response.headers
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


@bounded(120)
async def test_chat_whole_and_streamed(server):
    async with _client(server) as client:
        whole = await client.chat(model="demo", messages=HELLO, stream=False, options={"num_predict": 8})
        parts = [part async for part in await client.chat(model="demo", messages=HELLO, stream=True, options={"num_predict": 8})]
    assert whole.model == "demo" and whole.message.role == "assistant" and whole.message.content
    assert datetime.fromisoformat(whole.created_at).tzinfo is not None
    _timings_consistent(whole, eval_count=8)
    assert whole.done_reason == "length"
    *progress, final = parts
    assert progress and all(part.done is False and part.message.role == "assistant" for part in progress)
    assert "".join(part.message.content for part in progress) and final.message.content == ""
    _timings_consistent(final, eval_count=8)
    # The second request found the model loaded: it waited for no load.
    assert final.load_duration < whole.total_duration


@bounded(120)
async def test_generate_through_the_template_raw_and_with_a_system_prompt(server):
    async with _client(server) as client:
        templated = await client.generate(model="demo", prompt="Why is the sky blue?", options={"num_predict": 4, "seed": 1})
        with_system = await client.generate(model="demo", prompt="Why is the sky blue?", system="Answer briefly.", options={"num_predict": 4})
        raw = await client.generate(model="demo", prompt="Why is the sky blue?", raw=True, options={"num_predict": 4})
        streamed = [part async for part in await client.generate(model="demo", prompt="Why?", stream=True, options={"num_predict": 5})]
    for answer in (templated, with_system, raw):
        assert answer.response and answer.done
        _timings_consistent(answer, eval_count=4)
    # The template wraps the prompt (and the system prompt) in more tokens than the raw text has.
    assert raw.prompt_eval_count < templated.prompt_eval_count < with_system.prompt_eval_count
    assert "".join(part.response for part in streamed[:-1]) and streamed[-1].done and streamed[-1].response == ""
    _timings_consistent(streamed[-1], eval_count=5)


@bounded(120)
async def test_options_are_honoured(server, caplog):
    """A seed gives the same answer again, and another seed another; num_predict bounds eval_count; a stop string ends it."""
    caplog.set_level(logging.WARNING, logger="mlxtrio")
    async with _client(server) as client:

        async def answer(**options: object) -> ollama.ChatResponse:
            return await client.chat(model="demo", messages=HELLO, options={"num_predict": 24, "temperature": 1.0, **options})

        first, again, other = await answer(seed=7), await answer(seed=7), await answer(seed=8)
        assert first.message.content == again.message.content != other.message.content
        bounded_answer = await answer(num_predict=3, seed=7)
        assert bounded_answer.eval_count == 3 and bounded_answer.done_reason == "length"
        assert first.message.content.startswith(bounded_answer.message.content)
        stop = first.message.content[6:9]
        stopped = await answer(seed=7, stop=[stop])
        assert stopped.message.content == first.message.content[: first.message.content.index(stop)] and stopped.done_reason == "stop"
        # Greedy: the same whatever the seed.
        greedy = [await answer(temperature=0, seed=seed, num_predict=8) for seed in (1, 2)]
        assert greedy[0].message.content == greedy[1].message.content
        # Options Ollama itself does not know are ignored, as it ignores them; its runner's change nothing here.
        ignored = await answer(seed=7, num_gpu=99, use_mmap=False, no_such_option=1)
        assert ignored.message.content == first.message.content
    (warning,) = [record.getMessage() for record in caplog.records if "options" in record.getMessage()]
    assert warning.endswith("unknown options ignored: no_such_option")


@bounded(120)
async def test_logprobs_of_each_token_and_their_alternatives(server):
    async with _client(server) as client:
        whole = await client.chat(model="demo", messages=HELLO, logprobs=True, top_logprobs=2, options={"num_predict": 6, "seed": 4})
        parts = [
            part
            async for part in await client.generate(model="demo", prompt="Hello there", logprobs=True, stream=True, options={"num_predict": 6, "seed": 4})
        ]
        plain = await client.chat(model="demo", messages=HELLO, options={"num_predict": 6, "seed": 4})
    assert len(whole.logprobs) == whole.eval_count == 6
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in whole.logprobs)
    assert "".join(entry.token for entry in whole.logprobs) == whole.message.content
    streamed = [entry for part in parts for entry in part.logprobs or ()]
    assert len(streamed) == 6 and all(not entry.top_logprobs for entry in streamed)
    assert plain.logprobs is None


@bounded(120)
async def test_format_with_a_schema_or_json(server):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer"}}, "required": ["city", "days"]}
    async with _client(server) as client:
        answer = await client.chat(model="demo", messages=HELLO, format=schema, options={"num_predict": 200, "seed": 3})
        generated = await client.generate(model="demo", prompt="A JSON object", format="json", options={"num_predict": 200, "seed": 3})
        streamed = [part async for part in await client.chat(model="demo", messages=HELLO, format=schema, stream=True, options={"num_predict": 200})]
    jsonschema.validate(json.loads(answer.message.content), schema)
    assert isinstance(json.loads(generated.response), dict)
    jsonschema.validate(json.loads("".join(part.message.content for part in streamed)), schema)


@bounded(120)
async def test_think_puts_the_thinking_apart(server):
    """The demo model's template opens a think block when thinking is on, and the model never closes it."""
    async with _client(server) as client:
        thought = await client.chat(model="demo", messages=HELLO, think=True, options={"num_predict": 6, "temperature": 0})
        streamed = [part async for part in await client.chat(model="demo", messages=HELLO, think="high", stream=True, options={"num_predict": 6, "temperature": 0})]
        generated = await client.generate(model="demo", prompt="Hello there", think=True, options={"num_predict": 6, "temperature": 0})
        plain = [await client.chat(model="demo", messages=HELLO, think=think, options={"num_predict": 6, "temperature": 0}) for think in (False, None)]
    assert thought.message.thinking and thought.message.content == ""
    assert "".join(part.message.thinking or "" for part in streamed) == thought.message.thinking
    assert generated.thinking == thought.message.thinking and generated.response == ""
    for answer in plain:
        assert answer.message.thinking is None and answer.message.content


class _ForcedCall(httpx.AsyncBaseTransport):
    """Adds mlxtrio's tool_choice extension to each chat: random weights call a tool only when made to."""

    def __init__(self, choice: object) -> None:
        self._choice = choice
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        headers = {name: value for name, value in request.headers.items() if name.lower() != "content-length"}
        forced = httpx.Request(request.method, request.url, headers=headers, json={**body, "tool_choice": self._choice})
        return await self._inner.handle_async_request(forced)

    async def aclose(self) -> None:
        await self._inner.aclose()


@bounded(120)
async def test_tool_calls_come_back_in_ollamas_shape(server):
    question = [{"role": "user", "content": "What is the weather in Oslo?"}]
    async with _client(server, transport=_ForcedCall("required")) as client:
        answer = await client.chat(model="demo", messages=question, tools=[WEATHER], options={"num_predict": 200, "seed": 2})
        parts = [part async for part in await client.chat(model="demo", messages=question, tools=[WEATHER], stream=True, options={"num_predict": 200, "seed": 2})]
    (call,) = answer.message.tool_calls
    assert call.function.name == "get_weather" and answer.done_reason == "stop"
    # Arguments are an object, not JSON text.
    jsonschema.validate(dict(call.function.arguments), WEATHER["function"]["parameters"])
    streamed = [call for part in parts for call in part.message.tool_calls or ()]
    assert [call.function.name for call in streamed] == ["get_weather"]
    # The call and its result go back in Ollama's shape, and the conversation goes on.
    turns = [*question, answer.message, {"role": "tool", "content": "-3 and snowing", "tool_name": "get_weather"}]
    async with _client(server) as client:
        follow_up = await client.chat(model="demo", messages=turns, tools=[WEATHER], options={"num_predict": 4})
        plain = await client.chat(model="demo", messages=question, tools=[WEATHER], options={"num_predict": 4})
    assert follow_up.prompt_eval_count > plain.prompt_eval_count + 10
    # No tool_choice: random weights answer in text.
    assert plain.message.tool_calls is None and isinstance(plain.message.content, str)


def _png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


@bounded(180)
async def test_images_go_to_a_vision_model_as_base64(server):
    red, blue = _png((200, 30, 30)), _png((30, 30, 200))
    async with _client(server) as client:

        async def look(*images: bytes, **fields: object) -> ollama.ChatResponse:
            turn = {"role": "user", "content": "What is this?", **({"images": list(images)} if images else {})}
            return await client.chat(model="demo-vision", messages=[turn], options={"num_predict": 8, "temperature": 0}, **fields)

        plain, seen, again, other = await look(), await look(red), await look(red), await look(blue)
        generated = await client.generate(model="demo-vision", prompt="What is this?", images=[red], options={"num_predict": 8, "temperature": 0})
        with pytest.raises(ollama.ResponseError) as text_only:
            await client.chat(model="demo", messages=[{"role": "user", "content": "see", "images": [red]}])
    # The image's tokens are in the prompt, and the answer depends on the image.
    assert seen.prompt_eval_count > plain.prompt_eval_count + 1
    assert seen.message.content == again.message.content != other.message.content
    assert generated.prompt_eval_count == seen.prompt_eval_count
    assert text_only.value.status_code == 400 and "does not take images" in text_only.value.error


@bounded(120)
async def test_list_ps_show_and_version(server, admin):
    async with _client(server) as client:
        listed = await client.list()
        assert "demo" in [model.model for model in listed.models]
        assert (await client.ps()).models == []
        await client.chat(model="demo", messages=HELLO, options={"num_predict": 2}, keep_alive="10m")
        (running,) = (await client.ps()).models
        shown = await client.show("demo")
        # Ollama's default tag: "demo:latest" is "demo".
        assert (await client.show("demo:latest")).capabilities == shown.capabilities
        tagged = await client.chat(model="demo:latest", messages=HELLO, options={"num_predict": 2}, keep_alive="10m")
        with pytest.raises(ollama.ResponseError) as missing:
            await client.show("no-such-model")
    assert running.model == running.name == "demo" and running.size > 0 and running.size_vram == running.size
    assert tagged.model == "demo:latest" and tagged.eval_count == 2
    # The keep_alive of the latest request: about ten minutes from now.
    left = (running.expires_at - datetime.now(UTC)).total_seconds()
    assert 540 < left <= 600
    assert "completion" in shown.capabilities and shown.details is not None
    assert missing.value.status_code == 404 and missing.value.error.startswith('model "no-such-model" not found')
    async with httpx.AsyncClient(base_url=server.openai_url) as raw:
        version = (await raw.get("/api/version")).json()
        probe = await raw.get("/")
        head = await raw.head("/")
    assert isinstance(version["version"], str) and version["version"].count(".") == 2
    assert probe.status_code == 200 and probe.text == "Ollama is running" and head.status_code == 200


@bounded(120)
async def test_a_model_directory_is_listed_and_shown_from_its_files(server, cache_dir, tmp_path):
    """The demo model's files, as a repo in the Hugging Face cache: what its config.json and tokenizer_config.json say."""
    async with _client(server) as client:
        await client.generate(model="demo", prompt="hi", options={"num_predict": 1})  # built by its worker, if not yet
        snapshot = tmp_path / "hf-hub" / "models--local--tiny" / "snapshots" / "abc"
        shutil.copytree(demo_model_path(cache_dir), snapshot)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("abc")
        (listed,) = [model for model in (await client.list()).models if model.model == "local/tiny"]
        shown = await client.show("local/tiny")
        await client.chat(model="local/tiny", messages=HELLO, options={"num_predict": 2})
        (running,) = [model for model in (await client.ps()).models if model.model == "local/tiny"]
    config = json.loads((snapshot / "config.json").read_text())
    assert listed.size == (snapshot / "model.safetensors").stat().st_size and len(listed.digest) == 64
    assert listed.details.format == "safetensors" and listed.details.family == "llama" and listed.details.families == ["llama"]
    assert abs(listed.modified_at.timestamp() - (snapshot / "config.json").stat().st_mtime) < 0.001
    assert shown.modelinfo == {
        "general.architecture": "llama",
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.vocab_size": config["vocab_size"],
    }
    assert shown.template == json.loads((snapshot / "tokenizer_config.json").read_text())["chat_template"]
    # The demo's template offers tools and opens a think block when asked: tools and thinking; no vision tower.
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert running.digest == listed.digest and running.context_length == 4096 and running.size >= listed.size


@bounded(120)
async def test_a_request_without_messages_loads_or_unloads_the_model(server, admin):
    async with httpx.AsyncClient(base_url=server.openai_url, timeout=60) as raw:
        loaded = await raw.post("/api/generate", json={"model": "demo", "stream": False})
        assert loaded.json()["done_reason"] == "load" and loaded.json()["done"] is True
        assert [model["model"] for model in (await raw.get("/api/ps")).json()["models"]] == ["demo"]
        unloaded = _ndjson(await raw.post("/api/chat", json={"model": "demo", "keep_alive": 0}))
        assert [line["done_reason"] for line in unloaded] == ["unload"]
        assert (await raw.get("/api/ps")).json()["models"] == []
        # A busy model is not cut short: it unloads once its requests end.
        long = {"model": "demo", "prompt": "go", "options": {"num_predict": 60, "temperature": 0}}
        async with raw.stream("POST", "/api/generate", json=long) as streaming:
            assert streaming.status_code == 200
            later = await raw.post("/api/generate", json={"model": "demo", "keep_alive": 0, "stream": False})
            assert later.json()["done_reason"] == "unload"
            lines = [json.loads(line) async for line in streaming.aiter_lines()]
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 60
        with trio.fail_after(10):
            await (await server.state.supervisor.served_model("demo")).wait_stopped()
        assert (await raw.get("/api/ps")).json()["models"] == []


@bounded(120)
async def test_the_stream_is_ndjson_and_a_late_failure_is_an_error_line(server):
    async with httpx.AsyncClient(base_url=server.openai_url, timeout=60) as raw:
        lines = _ndjson(await raw.post("/api/chat", json={"model": "demo", "messages": HELLO, "options": {"num_predict": 6}}))
        assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
        assert {"total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"} <= set(lines[-1])
        # A late failure: the model unloaded while it streams (greedy, the demo model writes its 4000 tokens, never an end).
        long = {"model": "demo", "prompt": "go", "options": {"num_predict": 4000, "temperature": 0}}
        async with raw.stream("POST", "/api/generate", json=long) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith(NDJSON)
            received = []
            async for line in response.aiter_lines():
                received.append(json.loads(line))
                if len(received) == 2:
                    async with httpx.AsyncClient(base_url=server.admin_url) as admin:
                        await admin.post("/admin/unload", json={"model": "demo"})
    assert set(received[-1]) == {"error"} and "unloaded" in received[-1]["error"]
    assert all("error" not in line for line in received[:-1])


@pytest.mark.parametrize("server_settings", [{"prefill_step_size": 8, "stream_keepalive": 0.05}])
@bounded(120)
async def test_a_long_prefill_sends_empty_progress_lines_and_a_worker_killed_then_is_an_error_line(server, admin):
    """Hundreds of prefill steps of 8 tokens: empty progress objects every 50 ms meanwhile, which Ollama's clients read as any other."""
    body = {"model": "demo", "messages": [{"role": "user", "content": "the " * 3500}], "options": {"num_predict": 10}}
    received = []
    async with httpx.AsyncClient(base_url=server.openai_url, timeout=60) as raw, raw.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            received.append(json.loads(line))
            if len(received) == 2:
                os.kill((await worker_entry(admin))["pid"], signal.SIGKILL)
    *pings, failure = received
    assert [ollama.ChatResponse(**ping).message.content for ping in pings] == ["", ""] and not any(ping["done"] for ping in pings)
    assert list(failure) == ["error"] and ("SIGKILL" in failure["error"] or "crash" in failure["error"])


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/api/chat", {"model": "demo", "messages": "hello"}, "messages"),
        ("/api/chat", {"model": "demo", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "options": {"temperature": 9}}, "options.temperature"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "options": {"temperature": "hot"}}, "options.temperature"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "options": {"num_predict": 0}}, "options.num_predict"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "options": {"top_k": -3}}, "options.top_k"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "options": {"stop": ["x"] * 17}}, "options.stop"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "options": {"seed": 2**64}}, "options.seed"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "format": "yaml"}, "format"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "format": {"type": "object"}, "think": True}, "think"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "think": "very"}, "think"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "think": True, "tools": [WEATHER], "tool_choice": "required"}, "think"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "tools": [WEATHER], "tool_choice": {"function": {"name": "nope"}}}, "tool_choice"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "keep_alive": "soon"}, "keep_alive"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/api/chat", {"model": "demo", "messages": HELLO, "tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
        ("/api/chat", {"model": "demo", "messages": [{"role": "user", "content": "see", "images": ["bm90IGFuIGltYWdl"]}]}, "messages.0.images.0"),
        ("/api/chat", {"model": "demo", "messages": [{"role": "user", "content": "see", "images": ["***"]}]}, "messages.0.images.0"),
        ("/api/chat", {"model": "demo", "messages": [[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]}, "messages"),
        ("/api/generate", {"model": "demo", "prompt": "x", "suffix": "y"}, "suffix"),
        ("/api/generate", {"model": "demo", "prompt": "x", "context": [1, 2, 3]}, "context"),
        ("/api/generate", {"model": "demo", "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
        ("/api/generate", {"model": "demo", "prompt": 7}, "prompt"),
    ],
)
@bounded(60)
async def test_bad_input_is_an_ollama_shaped_400(server, path, body, names):
    async with httpx.AsyncClient(base_url=server.openai_url, timeout=60) as raw:
        response = await raw.post(path, json={**body, "stream": True})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    (message,) = response.json().values()
    assert list(response.json()) == ["error"] and names in message


@bounded(60)
async def test_an_unknown_model_and_unknown_paths_are_ollama_shaped_404s(server):
    async with _client(server) as client:
        with pytest.raises(ollama.ResponseError) as chat:
            await client.chat(model="nobody/nothing-here", messages=HELLO)
        with pytest.raises(ollama.ResponseError) as streamed:
            [part async for part in await client.generate(model="no-such-model", prompt="hi", stream=True)]
    assert chat.value.status_code == streamed.value.status_code == 404
    assert chat.value.error.startswith('model "nobody/nothing-here" not found')
    async with httpx.AsyncClient(base_url=server.openai_url) as raw:
        for response in (await raw.get("/api/nothing"), await raw.get("/api/chat")):
            assert response.status_code in (404, 405) and list(response.json()) == ["error"]


@bounded(60)
async def test_model_management_is_refused_with_how_models_are_managed(server):
    async with _client(server) as client:
        for call in (client.pull("llama3.2"), client.create(model="mine", from_="demo"), client.copy("demo", "mine"), client.delete("demo"), client.push("demo")):
            with pytest.raises(ollama.ResponseError) as refused:
                await call
            assert refused.value.status_code == 403 and "config file" in refused.value.error
        # A model that is here already: pulled.
        assert (await client.pull("demo")).status == "success"


@pytest.mark.parametrize("server_settings", [{"decode_concurrency": 1, "max_queue": 1}])
@bounded(120)
async def test_a_full_queue_is_a_429_and_a_stopping_server_a_503_with_retry_after(server):
    long = {"model": "demo", "prompt": "go", "options": {"num_predict": 3000, "temperature": 0}}
    async with httpx.AsyncClient(base_url=server.openai_url, timeout=60) as raw:
        # A stream's 200 comes once the worker has taken it in: then one decodes and one waits, and the queue is full.
        async with raw.stream("POST", "/api/generate", json=long) as first, raw.stream("POST", "/api/generate", json=long) as second:
            assert first.status_code == second.status_code == 200
            # Its keep_alive goes with it: a refused request does not decide when the model unloads.
            refused = await raw.post("/api/chat", json={"model": "demo", "messages": HELLO, "keep_alive": "5h"})
            (running,) = (await raw.get("/api/ps")).json()["models"]
        server.state.shutting_down = True
        try:
            stopping = await raw.post("/api/chat", json={"model": "demo", "messages": HELLO, "stream": False})
            loading = await raw.post("/api/generate", json={"model": "demo"})
        finally:
            server.state.shutting_down = False
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert list(refused.json()) == ["error"] and "capacity" in refused.json()["error"]
    assert (datetime.fromisoformat(running["expires_at"]) - datetime.now(UTC)).total_seconds() < 3600
    assert stopping.status_code == loading.status_code == 503 and stopping.json() == loading.json() == {"error": "the server is shutting down"}


@pytest.mark.parametrize("server_settings", [{"api_keys": (KEY,)}])
@bounded(60)
async def test_an_api_key_is_required_when_set(server):
    async with _client(server) as client:
        with pytest.raises(ollama.ResponseError) as refused:
            await client.list()
    assert refused.value.status_code == 401 and "API key" in refused.value.error
    async with _client(server, headers={"Authorization": f"Bearer {KEY}"}) as client:
        assert "demo" in [model.model for model in (await client.list()).models]
        answer = await client.generate(model="demo", prompt="hi", options={"num_predict": 2})
    assert answer.eval_count == 2
    # The browser checks too: a web page of another origin may not make it generate.
    async with httpx.AsyncClient(base_url=server.openai_url, headers={"Authorization": f"Bearer {KEY}"}) as raw:
        foreign = await raw.post("/api/chat", json={"model": "demo", "messages": HELLO}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and list(foreign.json()) == ["error"] and "evil.example" in foreign.json()["error"]
