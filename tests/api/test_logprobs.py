"""Log probabilities as OpenAI gives them: each token's own bytes, and as many distinct alternatives as asked for."""

from __future__ import annotations

import json

from ..helpers import bounded, sse_events

# Sampled freely, the demo model's random weights pick byte tokens that split characters now and then.
SAMPLED = {"model": "demo", "max_tokens": 300, "ignore_eos": True, "temperature": 1.0, "seed": 11}


def _rebuilds(entries: list[dict], text: str) -> None:
    joined = b"".join(bytes(entry["bytes"]) for entry in entries)
    # A character cut short (at max_tokens) or bytes that are no UTF-8 show as U+FFFD in the text.
    assert joined.decode("utf-8", errors="replace") == text
    if "\ufffd" not in text:
        assert joined == text.encode()


@bounded(120)
async def test_chat_logprobs_bytes_rebuild_the_text(client, openapi):
    body = {**SAMPLED, "messages": [{"role": "user", "content": "Écris « déjà vu » en 日本語 😀"}], "logprobs": True, "top_logprobs": 2}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    openapi.validate(response.json(), "CreateChatCompletionResponse")
    choice = response.json()["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == 300
    _rebuilds(entries, choice["message"]["content"])
    for entry in entries:
        assert len(entry["top_logprobs"]) == 2
        for alternative in entry["top_logprobs"]:
            assert bytes(alternative["bytes"]).decode("utf-8", errors="replace") == alternative["token"]
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
        events = sse_events((await streamed.aread()).decode())
    chunks = [choice for event in events[:-1] for choice in event["choices"]]
    content = "".join(chunk["delta"].get("content") or "" for chunk in chunks)
    _rebuilds([entry for chunk in chunks if chunk.get("logprobs") for entry in chunk["logprobs"]["content"]], content)


@bounded(120)
async def test_legacy_logprobs_give_as_many_alternatives_as_asked(client, openapi):
    """Alternatives were keyed by their text, and tokens holding parts of characters all read "\ufffd": they collided."""
    for wanted in (2, 5):
        response = await client.post("/v1/completions", json={**SAMPLED, "prompt": "déjà 日本 😀", "max_tokens": 200, "logprobs": wanted})
        assert response.status_code == 200, response.text
        openapi.validate(response.json(), "CreateCompletionResponse")
        logprobs = response.json()["choices"][0]["logprobs"]
        assert len(logprobs["tokens"]) == 200
        # The sampled token is among them: one more where it is not among the most likely.
        for top, token in zip(logprobs["top_logprobs"], logprobs["tokens"], strict=True):
            assert token in top and len(top) in (wanted, wanted + 1)
            assert len(top) == wanted or min(top.values()) == top[token]
        # Tokens that are no text of their own are named by their bytes, as OpenAI names them.
        for token in logprobs["tokens"]:
            assert "\ufffd" not in token or token.startswith("bytes:")


# The grammar makes the demo model write these words, whose characters its vocabulary splits across tokens.
WORDS = "naïve café, 東京 ✓"
ENUM = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"enum": [WORDS]}, "strict": True}}


@bounded(60)
async def test_bytes_rebuild_characters_split_across_tokens(client):
    body = {"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 60, "response_format": ENUM, "logprobs": True}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    entries = choice["logprobs"]["content"]
    assert json.loads(choice["message"]["content"]) == WORDS
    assert b"".join(bytes(entry["bytes"]) for entry in entries) == choice["message"]["content"].encode()
    # It does test what it says: some tokens hold part of a character.
    assert any(entry["token"] == "\ufffd" or "\ufffd" in entry["token"] for entry in entries)


@bounded(60)
async def test_a_completion_keeps_its_first_tokens_leading_space(client, cache_dir):
    from transformers import PreTrainedTokenizerFast

    from mlxtrio.worker._demo import ensure_demo_model

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(ensure_demo_model(cache_dir) / "tokenizer.json"))
    (the,) = tokenizer.encode(" the", add_special_tokens=False)
    body = {"model": "demo", "prompt": "Once upon", "max_tokens": 3, "logit_bias": {str(the): 100}, "logprobs": 0}
    for stream in (False, True):
        response = await client.post("/v1/completions", json={**body, "stream": stream})
        assert response.status_code == 200, response.text
        if stream:
            choices = [event["choices"][0] for event in sse_events(response.text)[:-1]]
        else:
            choices = [response.json()["choices"][0]]
        assert "".join(choice["text"] for choice in choices) == " the the the"
        assert [token for choice in choices for token in choice["logprobs"]["tokens"]] == [" the"] * 3
