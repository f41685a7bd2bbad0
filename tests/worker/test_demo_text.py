"""The demo model's text reads as text: printable characters only, never a special token or a piece of a character.

Its weights are random, so whatever it may sample it eventually does; a
"\ufffd" or a "<|user|>" in a demo answer reads like an encoding bug in the
server. It keeps a real byte-level tokenizer with special tokens and a chat
template (prompts use them); it only never generates them as text.
"""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from mlxtrio.worker._demo import ensure_demo_model, never_sampled_ids

from ..helpers import bounded

SPECIAL_TEXT = ["<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def assert_reads_as_text(text: str) -> None:
    assert text
    odd = sorted({char for char in text if not (char.isprintable() or char.isspace())})
    assert not odd, f"not printable: {odd!r} in {text!r}"
    assert "\ufffd" not in text
    assert not [special for special in SPECIAL_TEXT if special in text], text


def test_tokens_never_sampled_take_no_probability_at_temperature_one(demo, cache_dir):
    """Every context's distribution, not one lucky run: the mass left on them is nothing a sampler can find."""
    model, tokenizer = demo
    directory = ensure_demo_model(cache_dir)
    never = never_sampled_ids(directory / "tokenizer.json", keep=(tokenizer.eos_token_id,))
    special = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TEXT]
    # Special tokens (but the end of a turn, which ends generation without text), the control bytes and
    # the bytes that are only a piece of a UTF-8 character are all among them.
    assert set(special) - {tokenizer.eos_token_id} <= set(never)
    vocab = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab["Ċ"] in never and vocab["Ã"] in never  # "\n" alone and a lead byte of "é"
    assert tokenizer.eos_token_id not in never
    prompts = ["Once upon a time", "x", "日本語 and ümlaut ✨", " ".join(str(n) for n in range(300))]
    for prompt in prompts:
        ids = mx.array([tokenizer.encode(prompt)])
        logprobs = model(ids)[0]
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
        worst = mx.max(logprobs[:, mx.array(never)]).item()
        assert worst < -30, (prompt, worst)
    # The others keep a spread: a sampled text varies, it is not one greedy path.
    others = mx.array(sorted(set(range(logprobs.shape[-1])) - set(never)))
    assert mx.max(logprobs[:, others]).item() > -10


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
@bounded(120)
async def test_a_long_answer_at_temperature_one_is_printable_text(client, cache_dir, endpoint: str):
    # Long: the end of a turn is banned (the answer's end, never its text), every other token is the model's choice.
    eos = json.loads((ensure_demo_model(cache_dir) / "config.json").read_text())["eos_token_id"]
    body = {"model": "demo", "max_tokens": 1500, "logit_bias": {str(eos): -100}, "temperature": 1.0, "seed": 7}
    if endpoint == "/v1/completions":
        body["prompt"] = "Once upon a time"
    else:
        body["messages"] = [{"role": "user", "content": "Tell me a story, in ümlauts and emoji 🚀."}]
    response = await client.post(endpoint, json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    text = choice["text"] if endpoint == "/v1/completions" else choice["message"]["content"]
    assert response.json()["usage"]["completion_tokens"] == 1500
    assert choice["finish_reason"] == "length"
    assert_reads_as_text(text)
