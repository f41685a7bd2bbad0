"""Log probabilities as OpenAI gives them: each token's own bytes, and as many distinct alternatives as asked for."""

from __future__ import annotations

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
        assert [len(top) for top in logprobs["top_logprobs"]] == [wanted] * 200
        # Tokens that are no text of their own are named by their bytes, as OpenAI names them.
        for token in logprobs["tokens"]:
            assert "\ufffd" not in token or token.startswith("bytes:")
