"""Error cases the peers' suites leave to their own request models, checked on the wire against OpenAI's API.

Not ported from a peer: vLLM and llama.cpp test these through their own validation classes, which a running
server does not expose. OpenAI's published API (``../shared/openai/openapi.json``) is the reference: a 400
``invalid_request_error`` naming the parameter, a 404 ``model_not_found`` for a model that does not exist.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from ._wire import SYSTEM_USER, error_of


def test_unknown_model(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model-anywhere", messages=SYSTEM_USER, max_tokens=4)
    assert raised.value.code == "model_not_found"


@pytest.mark.parametrize(
    "path,change,param",
    [
        ("/v1/chat/completions", {"model": None}, "model"),
        ("/v1/chat/completions", {"messages": None}, "messages"),
        ("/v1/chat/completions", {"max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"temperature": 2.5}, "temperature"),
        ("/v1/chat/completions", {"top_p": 1.5}, "top_p"),
        ("/v1/chat/completions", {"n": 0}, "n"),
        ("/v1/chat/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/chat/completions", {"presence_penalty": 3}, "presence_penalty"),
        ("/v1/chat/completions", {"stream": "yes"}, "stream"),
        ("/v1/completions", {"prompt": 7}, "prompt"),
        ("/v1/completions", {"max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"frequency_penalty": -3}, "frequency_penalty"),
    ],
)
def test_bad_parameter(http: httpx.Client, model: str, path: str, change: dict, param: str):
    body = {"model": model, "max_tokens": 4}
    body.update({"messages": SYSTEM_USER} if "chat" in path else {"prompt": "Hello"})
    body.update(change)
    body = {key: value for key, value in body.items() if value is not None}
    error = error_of(http.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
