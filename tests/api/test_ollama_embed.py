"""Ollama's /api/embed and /api/embeddings against the real server and real embedding workers, through the ``ollama`` client."""

from __future__ import annotations

import math

import ollama
import pytest

from ..helpers import bounded

ENCODER, DECODER = "demo-embed", "demo-embed-decoder"
TEXTS = ["the quick brown fox", "jumps over", "the lazy dog again and again"]
# Over demo-embed's 512-token context.
TOO_LONG = "word " * 600


def _client(server) -> ollama.AsyncClient:  # noqa: ANN001
    return ollama.AsyncClient(host=server.openai_url, timeout=60)


@bounded(120)
async def test_embed_answers_the_vectors_of_v1_embeddings_with_ollamas_counts_and_durations(server, client):
    answer = await _client(server).embed(model=ENCODER, input=TEXTS)
    openai = (await client.post("/v1/embeddings", json={"model": ENCODER, "input": TEXTS})).json()
    assert answer.model == ENCODER and len(answer.embeddings) == len(TEXTS)
    assert [list(vector) for vector in answer.embeddings] == [row["embedding"] for row in openai["data"]]
    assert answer.prompt_eval_count == openai["usage"]["prompt_tokens"] > len(TEXTS)
    assert answer.total_duration >= answer.load_duration >= 0 and answer.total_duration > 0
    # One string is one vector; demo-embed normalises.
    one = await _client(server).embed(model=ENCODER + ":latest", input=TEXTS[0])
    assert one.embeddings[0] == answer.embeddings[0] and math.isclose(math.hypot(*one.embeddings[0]), 1.0, rel_tol=1e-5)


@bounded(120)
async def test_the_older_embeddings_endpoint_gives_the_same_vector(server):
    ollama_client = _client(server)
    legacy = await ollama_client.embeddings(model=DECODER, prompt=TEXTS[1])
    current = await ollama_client.embed(model=DECODER, input=[TEXTS[1]])
    assert list(legacy.embedding) == list(current.embeddings[0])
    assert list((await ollama_client.embeddings(model=DECODER, prompt="")).embedding) == []


@bounded(120)
async def test_truncate_is_ollamas_default_and_false_refuses_in_ollamas_shape(server, client):
    cut = await _client(server).embed(model=ENCODER, input=["fine", TOO_LONG])
    assert len(cut.embeddings) == 2 and cut.prompt_eval_count <= 512 + 16
    with pytest.raises(ollama.ResponseError) as refused:
        await _client(server).embed(model=ENCODER, input=["fine", TOO_LONG], truncate=False)
    assert refused.value.status_code == 400 and "input[1]" in refused.value.error and "512" in refused.value.error
    raw = await client.post("/api/embed", json={"model": ENCODER, "input": TOO_LONG, "truncate": False})
    assert raw.status_code == 400 and set(raw.json()) == {"error"}
    # Empty input: an empty answer, as Ollama's.
    assert (await _client(server).embed(model=ENCODER, input=[])).embeddings == []


@bounded(120)
async def test_matryoshka_dimensions_through_ollama(server):
    short = await _client(server).embed(model=DECODER, input=TEXTS[:2], dimensions=16)
    assert [len(vector) for vector in short.embeddings] == [16, 16]
    with pytest.raises(ollama.ResponseError) as refused:
        await _client(server).embed(model=ENCODER, input=TEXTS[:1], dimensions=16)
    assert refused.value.status_code == 400 and "dimensions" in refused.value.error


@bounded(120)
async def test_refusals_in_ollamas_shape(server, client):
    cases = [
        ({"model": "demo", "input": "hello"}, 400, "does not make embeddings"),
        ({"model": "no-such-model", "input": "hello"}, 404, "not found"),
        ({"model": ENCODER, "input": 3}, 400, "input"),
        ({"model": ENCODER, "input": ["ok", ""]}, 400, "input[1]"),
        ({"model": ENCODER, "input": "ok", "dimensions": 0}, 400, "dimensions"),
        ({"model": ENCODER, "input": "ok", "dimensions": 2**64}, 400, "dimensions"),
        ({"model": ENCODER, "input": "ok", "truncate": "yes"}, 400, "truncate"),
        ({"model": ENCODER, "input": ["x"] * 2049}, 400, "2048"),
    ]
    for body, status, says in cases:
        answer = await client.post("/api/embed", json=body)
        assert answer.status_code == status and set(answer.json()) == {"error"} and says in answer.json()["error"], (body, answer.text)
    legacy = await client.post("/api/embeddings", json={"model": "demo", "prompt": "hello"})
    assert legacy.status_code == 400 and "does not make embeddings" in legacy.json()["error"]
    # Healthy after.
    assert len((await _client(server).embed(model=ENCODER, input="still here")).embeddings) == 1


@bounded(60)
async def test_show_names_an_embedding_models_capability(server):
    ollama_client = _client(server)
    assert (await ollama_client.show(ENCODER)).capabilities == ["embedding"]
    assert "completion" in (await ollama_client.show("demo")).capabilities


@bounded(120)
async def test_an_empty_input_loads_or_unloads_the_model_as_ollamas_does(server, client, admin):
    async def state() -> str:
        workers = (await admin.get("/admin/status")).json()["workers"]
        return next((entry["state"] for entry in workers if entry["model"] == DECODER), "unloaded")

    assert (await _client(server).embed(model=DECODER, input=[])).embeddings == []
    assert await state() == "ready"
    assert (await client.post("/api/embed", json={"model": DECODER, "input": "", "keep_alive": 0})).json()["embeddings"] == []
    assert await state() == "unloaded"
    refused = await client.post("/api/embed", json={"model": "demo", "input": []})
    assert refused.status_code == 400 and "does not make embeddings" in refused.json()["error"]


@bounded(120)
async def test_a_keep_alive_past_any_date_is_kept_loaded_and_ps_still_answers(server, client):
    for keep_alive in ("300000000h", 1e300):
        answered = await client.post("/api/embed", json={"model": ENCODER, "input": "x", "keep_alive": keep_alive})
        assert answered.status_code == 200, answered.text
        listed = await client.get("/api/ps")
        assert listed.status_code == 200 and listed.json()["models"][0]["expires_at"].startswith("9999"), listed.text
    # Go's durations, as Ollama's clients write them.
    for keep_alive in ("0", "+5m", "1500ms", "2us"):
        answered = await client.post("/api/embed", json={"model": ENCODER, "input": "x", "keep_alive": keep_alive})
        assert answered.status_code == 200, (keep_alive, answered.text)


@bounded(120)
async def test_one_long_list_of_token_ids_is_one_input_over_the_context(client):
    refused = await client.post("/v1/embeddings", json={"model": DECODER, "input": [5] * 3000})
    error = refused.json()["error"]
    assert refused.status_code == 400 and error["code"] == "context_length_exceeded" and "2048 inputs" not in error["message"], error
