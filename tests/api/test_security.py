"""Access control and limits: API keys, the admin token, loopback defaults, request caps."""

from __future__ import annotations

import os
import sys

import openai
import pytest
import trio

from mlxtrio import Config

from ..helpers import bounded

COMPLETION = {"model": "demo", "prompt": "hi", "max_tokens": 2}
KEYS = ("first-key-0123456789", "second-key-abcdefghij")
ADMIN_TOKEN = "admin-token-zyxwvutsrq"


@pytest.mark.parametrize("server_settings", [{"api_keys": KEYS}])
@bounded(60)
async def test_api_keys_guard_the_openai_api(server, client, openapi):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEYS[0]}"}, {"Authorization": "Bearer"}):
        for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/v1/models/demo")):
            response = await client.request(method, path, json=COMPLETION, headers=headers)
            assert response.status_code == 401, (headers, path, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            openapi.validate(response.json(), "ErrorResponse")
            assert response.json()["error"]["code"] == "invalid_api_key"
    # Refused before the body is read: an unauthenticated 20 MiB body is a 401, not a 413.
    big = await client.post("/v1/completions", content=b"x" * (20 << 20), headers={"content-type": "application/json"})
    assert big.status_code == 401 and big.headers["Connection"] == "close"
    assert (await client.get("/health")).status_code == 200  # open, for load balancers
    for key in KEYS:
        response = await client.post("/v1/completions", json=COMPLETION, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
    # The official client sends its api_key the same way.
    async with openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key=KEYS[1]) as official:
        assert (await official.models.list()).data[0].id == "demo"
    async with openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="nope", max_retries=0) as official:
        with pytest.raises(openai.AuthenticationError):
            await official.models.list()


@pytest.mark.parametrize("server_settings", [{"api_keys": KEYS}])
@bounded(60)
async def test_api_keys_also_come_as_x_api_key(server, client):
    """Anthropic's clients send the key as ``x-api-key``: the same keys, on every path of the API port."""
    for headers in ({"x-api-key": KEYS[0]}, {"x-api-key": KEYS[1], "Authorization": "Bearer wrong"}):
        response = await client.post("/v1/completions", json=COMPLETION, headers=headers)
        assert response.status_code == 200, (headers, response.text)
    for headers in ({"x-api-key": "wrong"}, {"x-api-key": ""}, {"X-Api-Key": KEYS[0][:-1]}):
        response = await client.post("/v1/completions", json=COMPLETION, headers=headers)
        assert response.status_code == 401, (headers, response.text)
    refused = await client.get("/v1/models")
    assert "x-api-key" in refused.json()["error"]["message"]


@pytest.mark.parametrize("server_settings", [{"admin_token": ADMIN_TOKEN, "api_keys": KEYS}])
@bounded(60)
async def test_admin_token_guards_the_admin_api_and_no_secret_is_shown(admin, openapi):
    for path in ("/admin/status", "/admin/health", "/metrics"):
        refused = await admin.get(path)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_admin_token"
        # It asks for what it needs: the admin token, not an API key (issue 24, item 18).
        assert "admin token" in refused.json()["error"]["message"] and "API key" not in refused.json()["error"]["message"]
        openapi.validate(refused.json(), "ErrorResponse")
        # An API key is not an admin token.
        wrong = await admin.get(path, headers={"Authorization": f"Bearer {KEYS[0]}"})
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "the admin token is not valid"
    assert (await admin.post("/admin/load", json={"model": "demo"})).status_code == 401
    allowed = await admin.get("/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert allowed.status_code == 200
    assert allowed.json()["config"]["api_keys"] == 2 and allowed.json()["config"]["admin_token"] is True
    for secret in (*KEYS, ADMIN_TOKEN):
        assert secret not in allowed.text
        assert secret not in repr(Config.from_environment(env={}, api_keys=KEYS, admin_token=ADMIN_TOKEN))


def test_keys_from_the_environment_and_a_file(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# one per line\nfrom-file-1\n\nfrom-file-2\n")
    config = Config.from_environment(env={"MLX_API_KEY": "a, b", "MLX_API_KEY_FILE": str(key_file)})
    assert config.api_keys == ("a", "b", "from-file-1", "from-file-2")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_admin_needs_no_token(host):
    assert Config.from_environment(env={"MLX_ADMIN_HOST": host}).admin_host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_admin_beyond_loopback_without_a_token_is_refused(host):
    with pytest.raises(ValueError, match="MLX_ADMIN_TOKEN"):
        Config.from_environment(env={"MLX_ADMIN_HOST": host})
    assert Config.from_environment(env={"MLX_ADMIN_HOST": host, "MLX_ADMIN_TOKEN": "t"}).admin_host == host


@bounded(60)
async def test_the_server_refuses_to_start_with_an_open_admin_api(tmp_path):
    result = await trio.run_process(
        [sys.executable, "-m", "mlxtrio", "serve", "--admin-host", "0.0.0.0", "--port", "0", "--admin-port", "0"],
        env={**os.environ, "MLX_CACHE_DIR": str(tmp_path)},
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr.decode()
    assert b"MLX_ADMIN_TOKEN" in result.stderr and b"Traceback" not in result.stderr


def test_defaults_bind_loopback_only():
    config = Config.from_environment(env={})
    assert (config.host, config.admin_host) == ("127.0.0.1", "127.0.0.1")
    assert config.api_keys == () and config.admin_token is None


@pytest.mark.parametrize("server_settings", [{"max_tokens_limit": 6, "max_choices": 2, "max_body_bytes": 4096}])
@bounded(60)
async def test_request_caps_are_settings(client, openapi):
    cases = [
        ({**COMPLETION, "max_tokens": 7}, "/v1/completions", "max_tokens"),
        ({**COMPLETION, "n": 3}, "/v1/completions", "n"),
        (
            {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7},
            "/v1/chat/completions",
            "max_completion_tokens",
        ),
        ({**COMPLETION, "stop": ["x" * 513]}, "/v1/completions", "stop"),
    ]
    for body, path, param in cases:
        response = await client.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        openapi.validate(response.json(), "ErrorResponse")
        assert response.json()["error"]["param"] == param
    too_big = await client.post("/v1/completions", json={**COMPLETION, "prompt": "x" * 5000})
    assert too_big.status_code == 413
    # Without max_tokens, the cap is the default.
    capped = await client.post("/v1/completions", json={"model": "demo", "prompt": "hi", "ignore_eos": True})
    assert capped.json()["usage"]["completion_tokens"] == 6
    assert (await client.post("/v1/completions", json={**COMPLETION, "n": 2})).status_code == 200


@bounded(30)
async def test_the_admin_api_reads_small_bodies_only(admin):
    response = await admin.post("/admin/load", content=b"{" + b" " * (128 * 1024) + b"}", headers={"content-type": "application/json"})
    assert response.status_code == 413
