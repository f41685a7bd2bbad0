"""POST /v1/embeddings through the real server and the demo embedding models' real workers: the official clients
(the openai SDK, langchain), what the vectors promise, limits and refusals in OpenAI's shape, and an embedding
request beside a long generation of another model."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import openai
import pytest

from mlxtrio import ServerHandle

from ..helpers import LONG_STREAM, bounded, worker_entry

ENCODER, DECODER = "demo-embed", "demo-embed-decoder"
# demo-embed's context (its BERT's positions).
ENCODER_MAX_TOKENS = 512


def _sdk(server: ServerHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="unused", max_retries=0)


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


async def _embed(client: httpx.AsyncClient, model: str, given: object, **fields: object) -> dict:
    response = await client.post("/v1/embeddings", json={"model": model, "input": given, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@bounded(120)
async def test_the_sdk_embeds_a_string_a_list_and_token_ids(server, openapi):
    async with _sdk(server) as sdk:
        one = await sdk.embeddings.create(model=ENCODER, input="the quick brown fox")
        assert len(one.data) == 1 and one.data[0].index == 0 and len(one.data[0].embedding) > 1
        assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens
        assert _norm(one.data[0].embedding) == pytest.approx(1.0, abs=1e-4)  # its sentence-transformers files normalise
        several = await sdk.embeddings.create(model=ENCODER, input=["the quick brown fox", "jumps", "over the lazy dog"])
        assert [row.index for row in several.data] == [0, 1, 2]
        assert several.data[0].embedding == pytest.approx(one.data[0].embedding, abs=1e-5)
        ids = await sdk.embeddings.create(model=ENCODER, input=[5, 6, 7, 8])
        assert ids.usage.prompt_tokens == 4
        nested = await sdk.embeddings.create(model=ENCODER, input=[[5, 6, 7, 8], [9, 10]])
        assert nested.usage.prompt_tokens == 6
        assert nested.data[0].embedding == pytest.approx(ids.data[0].embedding, abs=1e-5)
        # What came over the wire is OpenAI's CreateEmbeddingResponse.
        raw = await sdk.embeddings.with_raw_response.create(model=DECODER, input=["a", "b"], encoding_format="float")
        openapi.validate(json.loads(raw.content), "CreateEmbeddingResponse")


@bounded(120)
async def test_base64_is_float32_little_endian_as_the_sdk_decodes_it(server, client):
    floats = (await _embed(client, DECODER, ["one input", "another"], encoding_format="float"))["data"]
    encoded = (await _embed(client, DECODER, ["one input", "another"], encoding_format="base64"))["data"]
    for plain, packed in zip(floats, encoded, strict=True):
        raw = base64.b64decode(packed["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(plain["embedding"], abs=1e-6)
    async with _sdk(server) as sdk:
        # Without encoding_format the SDK asks for base64 and decodes it itself; asked explicitly, it hands over the text.
        default = await sdk.embeddings.create(model=DECODER, input=["one input", "another"])
        assert default.data[1].embedding == pytest.approx(floats[1]["embedding"], abs=1e-6)
        explicit = await sdk.embeddings.create(model=DECODER, input=["one input", "another"], encoding_format="base64")
        assert explicit.data[1].embedding == encoded[1]["embedding"]


@bounded(120)
async def test_dimensions_shorten_a_matryoshka_model_and_are_refused_by_others(server, client):
    async with _sdk(server) as sdk:
        full = await sdk.embeddings.create(model=DECODER, input="shorter vectors", encoding_format="float")
        short = await sdk.embeddings.create(model=DECODER, input="shorter vectors", dimensions=8, encoding_format="float")
    assert len(short.data[0].embedding) == 8 < len(full.data[0].embedding)
    assert _norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    response = await client.post("/v1/embeddings", json={"model": ENCODER, "input": "x", "dimensions": 8})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dimensions"


@bounded(180)
@pytest.mark.parametrize("model", [ENCODER, DECODER])
async def test_an_input_alone_and_in_a_batch_is_the_same_and_different_inputs_differ(client, model):
    alone = (await _embed(client, model, "alpha beta"))["data"][0]["embedding"]
    batch = [
        "a much longer input than the others, so that the short ones are padded beside it in the pass",
        "alpha beta",
        "gamma",
    ]
    together = [row["embedding"] for row in (await _embed(client, model, batch))["data"]]
    assert together[1] == alone
    assert together[0] != pytest.approx(together[1], abs=1e-3) and together[2] != pytest.approx(together[1], abs=1e-3)


@bounded(120)
async def test_langchain_embeds_documents_and_a_query(server):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: else langchain tokenizes with tiktoken (OpenAI's vocabulary, fetched from the
    # network) and sends OpenAI's token ids, which mean nothing to another model; texts are what a local model needs.
    embeddings = OpenAIEmbeddings(
        model=ENCODER, base_url=server.openai_url + "/v1", api_key="unused", check_embedding_ctx_length=False, max_retries=0
    )
    documents = await embeddings.aembed_documents(["retrieval needs vectors", "of every document"])
    query = await embeddings.aembed_query("retrieval needs vectors")
    assert len(documents) == 2 and len(documents[0]) == len(query) > 1
    assert query == pytest.approx(documents[0], abs=1e-5)
    assert documents[1] != pytest.approx(documents[0], abs=1e-3)


@bounded(180)
async def test_an_embedding_request_does_not_wait_behind_another_model_s_long_generation(client, admin):
    assert (await admin.post("/admin/load", json={"model": ENCODER})).status_code == 200
    # Some 4000 tokens of demo: seconds of generation on any machine.
    async with client.stream("POST", "/v1/completions", json={**LONG_STREAM, "max_tokens": 4000}) as stream:
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        async for line in lines:
            if line.startswith("data: ") and '"text":"' in line:
                break
        answer = await _embed(client, ENCODER, ["while", "another", "model", "generates"])
        # The generation is still going: its worker has it in flight.
        assert (await worker_entry(admin, "demo"))["active_requests"] == 1
        assert len(answer["data"]) == 4


def _error(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"], error
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "", "input": "x"}, "model"),
        ({"model": ENCODER}, "input"),
        ({"model": ENCODER, "input": 5}, "input"),
        ({"model": ENCODER, "input": ""}, "input"),
        ({"model": ENCODER, "input": []}, "input"),
        ({"model": ENCODER, "input": ["a", ""]}, "input[1]"),
        ({"model": ENCODER, "input": ["a", 1]}, "input"),
        ({"model": ENCODER, "input": [True, 2]}, "input"),
        ({"model": ENCODER, "input": [-1]}, "input"),
        ({"model": ENCODER, "input": [1.5]}, "input"),
        ({"model": ENCODER, "input": [[1], []]}, "input[1]"),
        ({"model": ENCODER, "input": [[1, "x"]]}, "input[0]"),
        ({"model": ENCODER, "input": [[2**31]]}, "input[0]"),
        ({"model": ENCODER, "input": ["a"] * 2049}, "input"),
        ({"model": ENCODER, "input": [[1] * 150_001, [1] * 150_000]}, "input"),
        ({"model": ENCODER, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": ENCODER, "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": ENCODER, "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": ENCODER, "input": "x", "user": 5}, "user"),
        ({"model": ENCODER, "input": "x", "keep_alive": "soon"}, "keep_alive"),
    ],
)
async def test_each_malformed_field_is_a_400_naming_it(client, admin, body, param):
    assert _error(await client.post("/v1/embeddings", json=body))["param"] == param
    # Refused before any model was loaded for it.
    assert all(entry["state"] == "unloaded" for entry in (await admin.get("/admin/status")).json()["workers"])


@bounded(120)
async def test_refusals_by_the_model_and_the_server_is_healthy_after(client, admin, openapi):
    too_long = _error(await client.post("/v1/embeddings", json={"model": ENCODER, "input": ["fine", "word " * 600]}))
    assert (too_long["code"], too_long["param"]) == ("context_length_exceeded", "input[1]")
    assert str(ENCODER_MAX_TOKENS) in too_long["message"], too_long
    outside = _error(await client.post("/v1/embeddings", json={"model": ENCODER, "input": [[10**6]]}))
    assert outside["param"] == "input[0]", outside
    generative = _error(await client.post("/v1/embeddings", json={"model": "demo", "input": "x"}))
    assert (generative["param"], generative["code"]) == ("model", "model_not_embedding")
    # A built-in's task is known: demo was refused without loading.
    assert (await worker_entry(admin, "demo"))["loads"] == 0
    # An embedding model in each generating surface: a 400 in that surface's shape.
    chat = _error(await client.post("/v1/chat/completions", json={"model": ENCODER, "messages": [{"role": "user", "content": "hi"}]}))
    assert (chat["param"], chat["code"]) == ("model", "model_not_generative")
    streamed = await client.post("/v1/completions", json={"model": DECODER, "prompt": "hi", "stream": True})
    assert _error(streamed)["code"] == "model_not_generative"
    messages = await client.post("/v1/messages", json={"model": ENCODER, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert messages.status_code == 400 and messages.json()["type"] == "error" and "embedding model" in messages.json()["error"]["message"]
    responses = await client.post("/v1/responses", json={"model": ENCODER, "input": "hi"})
    assert responses.status_code == 400 and responses.json()["error"]["param"] == "model"
    assert (await client.get("/health")).status_code == 200
    good = await _embed(client, ENCODER, "still serving")
    openapi.validate(good, "CreateEmbeddingResponse")


@bounded(120)
async def test_embeddings_count_in_the_metrics_and_the_request_log(client, admin):
    answer = await _embed(client, ENCODER, ["counted", "twice over"])
    metrics = (await admin.get("/metrics")).text
    assert f'mlxtrio_prompt_tokens_total{{model="{ENCODER}"}} {float(answer["usage"]["prompt_tokens"])}' in metrics, metrics
    assert any(
        line.startswith("mlxtrio_requests_total") and 'endpoint="/v1/embeddings"' in line and f'model="{ENCODER}"' in line and 'status="200"' in line
        for line in metrics.splitlines()
    )


@bounded(120)
async def test_a_large_answer_is_whole_in_both_encodings(client):
    # 1100 vectors of demo-embed's 64 floats: over the size the server writes in its event loop.
    texts = [f"input {index}" for index in range(1100)]
    floats = (await _embed(client, ENCODER, texts))["data"]
    packed = (await _embed(client, ENCODER, texts, encoding_format="base64"))["data"]
    assert [row["index"] for row in floats] == list(range(1100)) == [row["index"] for row in packed]
    raw = base64.b64decode(packed[1099]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(floats[1099]["embedding"], abs=1e-6)
    assert floats[1099]["embedding"] != pytest.approx(floats[0]["embedding"], abs=1e-3)
