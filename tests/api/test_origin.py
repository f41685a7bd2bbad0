"""A web page must not drive either API (issue 22, item 6): the Host, the Origin, JSON content types, opt-in CORS.

A page in a local browser can send simple requests (no preflight) to
loopback ports, and with DNS rebinding can read answers under its own name.
Each test sends what a browser would, over real HTTP to the real server.
"""

from __future__ import annotations

import socket
import sys

import httpx
import pytest
import trio

from mlxtrio import Config

from ..helpers import bounded, loaded_entry, sse_events, status, worker_entry

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ATTACKER = "http://attacker.example"
APP = "https://app.example"
KEY = "origin-test-key-0123456789"
ADMIN_TOKEN = "origin-test-admin-token-zyxw"


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


def _both(server, client: httpx.AsyncClient, admin: httpx.AsyncClient) -> tuple:
    """Each API: its client, its port, a GET and a POST endpoint with a body it accepts."""
    return (
        (client, _port(server.openai_url), "/v1/models", "/v1/chat/completions", CHAT),
        (admin, _port(server.admin_url), "/admin/status", "/admin/load", {"model": "demo"}),
    )


def _refused(response: httpx.Response, status_code: int, code: str, named: str, openapi) -> None:
    assert response.status_code == status_code, response.text
    openapi.validate(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code) and named in error["message"], error


def _no_cors_headers(response: httpx.Response) -> None:
    assert not [name for name in response.headers if name.lower().startswith("access-control-")], response.headers


@bounded(60)
async def test_the_host_must_name_this_server_on_both_ports(server, client, admin, openapi):
    """DNS rebinding: a page's own name resolving to 127.0.0.1 reaches the port, with its name as the Host."""
    for http, port, get, post, body in _both(server, client, admin):
        for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"LocalHost:{port}", f"[::1]:{port}", "[::1]", f"mlx.localhost:{port}", "127.0.0.2"):
            response = await http.get(get, headers={"Host": host})
            assert response.status_code == 200, (host, response.text)
        for host in ("attacker.example", f"attacker.example:{port}", f"localhost.attacker.example:{port}", f"127.0.0.1.nip.io:{port}", "10.0.0.1", "[::1", f"[::1]x:{port}", "localhost:x"):
            _refused(await http.get(get, headers={"Host": host}), 421, "host_not_allowed", host, openapi)
            # Refused before the body is read, so the connection closes.
            refused = await http.post(post, json=body, headers={"Host": host})
            _refused(refused, 421, "host_not_allowed", host, openapi)
            assert refused.headers["Connection"] == "close"
    _refused(await client.get("/health", headers={"Host": "attacker.example"}), 421, "host_not_allowed", "attacker.example", openapi)
    assert (await status(admin))["intake"]["handed_over"] == 0


@pytest.mark.parametrize("server_settings", [{"allowed_hosts": ("mlx.example.net", "192.0.2.7"), "api_keys": (KEY,)}])
@bounded(60)
async def test_allowed_hosts_are_added_to_the_loopback_names(server, client, admin, openapi):
    for http, port, get, _post, _body in _both(server, client, admin):
        headers = {"Authorization": f"Bearer {KEY}"} if http is client else {}
        for host in ("mlx.example.net", f"MLX.example.net:{port}", f"192.0.2.7:{port}", f"localhost:{port}"):
            assert (await http.get(get, headers={**headers, "Host": host})).status_code == 200, host
        for host in ("example.net", f"www.mlx.example.net:{port}", "192.0.2.8"):
            # The Host is checked before the key: a 421 even with no key.
            _refused(await http.get(get, headers={"Host": host}), 421, "host_not_allowed", host, openapi)


@pytest.mark.parametrize("server_settings", [{"allowed_hosts": ("*",)}])
@bounded(60)
async def test_any_host_when_allowed_but_a_foreign_origin_still_cannot_post(server, client, admin, openapi):
    for http, port, get, post, body in _both(server, client, admin):
        assert (await http.get(get, headers={"Host": f"attacker.example:{port}"})).status_code == 200
        refused = await http.post(post, json=body, headers={"Host": f"attacker.example:{port}", "Origin": ATTACKER})
        _refused(refused, 403, "origin_not_allowed", ATTACKER, openapi)


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine beyond loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("server_settings", [{"host": _non_loopback_address() or "127.0.0.1"}])
@bounded(60)
async def test_a_non_loopback_bound_address_is_allowed(server, client, server_settings, openapi):
    address = server_settings["host"]
    if address == "127.0.0.1":
        pytest.skip("this machine has no address beyond loopback")
    assert server.openai_url == f"http://{address}:{_port(server.openai_url)}"
    assert (await client.get("/v1/models")).status_code == 200  # httpx sends Host: address:port
    assert (await client.get("/v1/models", headers={"Host": address})).status_code == 200
    _refused(await client.get("/v1/models", headers={"Host": "attacker.example"}), 421, "host_not_allowed", "attacker.example", openapi)


@pytest.mark.parametrize("server_settings", [{"host": "0.0.0.0"}])  # noqa: S104 - the wildcard bind under test
@bounded(60)
async def test_a_wildcard_bind_allows_address_literals_but_not_names(server, openapi):
    """Bound to every interface, the server cannot know its addresses; an address cannot be rebound, a name can."""
    port = _port(server.openai_url)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for host in (f"192.0.2.7:{port}", f"[2001:db8::7]:{port}", f"0.0.0.0:{port}", f"localhost:{port}"):
            assert (await client.get("/v1/models", headers={"Host": host})).status_code == 200, host
        for host in (f"attacker.example:{port}", f"mlx.example.net:{port}"):
            _refused(await client.get("/v1/models", headers={"Host": host}), 421, "host_not_allowed", host, openapi)


@bounded(60)
async def test_a_page_cannot_post_to_either_api_and_the_model_stays_loaded(server, client, admin, openapi):
    """The issue's ``fetch(..., {method: 'POST', mode: 'no-cors'})`` and text/plain posts: no preflight, so refused here."""
    loads = (await loaded_entry(admin))["loads"]
    other_port = _port(server.openai_url)
    for origin in (ATTACKER, "null", "http://localhost:3000", f"http://127.0.0.1:{other_port}", f"http://localhost:{_port(server.admin_url)}"):
        # What the fetch sends: the page's Origin, no body.
        refused = await admin.post("/admin/unload", headers={"Origin": origin, "Sec-Fetch-Mode": "no-cors"})
        _refused(refused, 403, "origin_not_allowed", origin, openapi)
    for http, path, body in ((admin, "/admin/unload", b'{"model": "demo"}'), (client, "/v1/chat/completions", httpx.Request("POST", "/", json=CHAT).content)):
        for content_type in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonp"):
            # With the page's Origin: refused for the Origin.
            refused = await http.post(path, content=body, headers={"Content-Type": content_type, "Origin": ATTACKER})
            _refused(refused, 403, "origin_not_allowed", ATTACKER, openapi)
            # A browser that sent no Origin (or any client): a body that says it is not JSON is not read as JSON.
            refused = await http.post(path, content=body, headers={"Content-Type": content_type})
            _refused(refused, 415, "unsupported_content_type", content_type, openapi)
            assert refused.headers["Connection"] == "close"
        _refused(await http.post(path, content=body), 415, "unsupported_content_type", "no Content-Type", openapi)
        # An empty body with a non-JSON type is what an empty form sends.
        _refused(await http.post(path, headers={"Content-Type": "text/plain"}), 415, "unsupported_content_type", "text/plain", openapi)
    entry = await worker_entry(admin)
    assert (entry["state"], entry["loads"]) == ("ready", loads)
    assert (await status(admin))["intake"]["handed_over"] == 0


@bounded(60)
async def test_json_content_types_and_same_origin_posts_are_accepted(server, client, admin):
    for http, port, _get, post, body in _both(server, client, admin):
        for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON", "application/vnd.mlxtrio+json"):
            response = await http.post(post, content=httpx.Request("POST", "/", json=body).content, headers={"Content-Type": content_type})
            assert response.status_code == 200, (content_type, response.text)
        for origin, host in ((f"http://127.0.0.1:{port}", None), (f"http://localhost:{port}", f"localhost:{port}"), (f"http://[::1]:{port}", f"[::1]:{port}")):
            headers = {"Origin": origin} if host is None else {"Origin": origin, "Host": host}
            response = await http.post(post, json=body, headers=headers)
            assert response.status_code == 200, (origin, response.text)
            _no_cors_headers(response)
    # Same origin means the same port too: the other API's origin is another origin.
    for http, port, _get, post, body in _both(server, client, admin):
        other = _port(server.admin_url) if port == _port(server.openai_url) else _port(server.openai_url)
        assert (await http.post(post, json=body, headers={"Origin": f"http://127.0.0.1:{other}"})).status_code == 403
    # No Origin (the SDKs, curl): accepted; an empty body needs no content type.
    assert (await admin.post("/admin/unload")).status_code == 200


@pytest.mark.parametrize("server_settings", [{"cors_origins": (APP, "http://localhost:5173"), "api_keys": (KEY,), "admin_token": ADMIN_TOKEN}])
@bounded(60)
async def test_a_configured_origin_gets_cors_and_its_preflight_needs_no_key(server, client, admin):
    tokens = {client: KEY, admin: ADMIN_TOKEN}
    for http, _port_, get, post, body in _both(server, client, admin):
        for origin in (APP, "http://LOCALHOST:5173"):
            # The browser's preflight carries no Authorization header: it must not get a 401.
            preflight = await http.options(
                post,
                headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os"},
            )
            assert preflight.status_code in (200, 204), preflight.text
            headers = preflight.headers
            assert headers["Access-Control-Allow-Origin"] == origin
            assert "POST" in [method.strip() for method in headers["Access-Control-Allow-Methods"].split(",")]
            allowed = {name.strip().lower() for name in headers["Access-Control-Allow-Headers"].split(",")}
            assert {"authorization", "content-type", "x-stainless-os"} <= allowed
            assert int(headers["Access-Control-Max-Age"]) > 0
            assert "origin" in headers["Vary"].lower()
        authorization = {"Authorization": f"Bearer {tokens[http]}", "Origin": APP}
        for response in (await http.get(get, headers=authorization), await http.post(post, json=body, headers=authorization)):
            assert response.status_code == 200, response.text
            assert response.headers["Access-Control-Allow-Origin"] == APP and "origin" in response.headers["Vary"].lower()
            assert "x-request-id" in response.headers["Access-Control-Expose-Headers"].lower()
        # A refusal the page can read: its own 401.
        refused = await http.post(post, json=body, headers={"Origin": APP})
        assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == APP
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers={"Authorization": f"Bearer {KEY}", "Origin": APP}) as streamed:
        assert streamed.status_code == 200 and streamed.headers["Access-Control-Allow-Origin"] == APP
        assert sse_events((await streamed.aread()).decode())[-1] == "[DONE]"


@pytest.mark.parametrize("server_settings", [{"cors_origins": ("*",)}])
@bounded(60)
async def test_any_origin_when_allowed(server, client, admin):
    for http, _port_, _get, post, body in _both(server, client, admin):
        for origin in (ATTACKER, "null"):
            preflight = await http.options(post, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == "*"
            assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
            response = await http.post(post, json=body, headers={"Origin": origin})
            assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "server_settings", [{"cors_origins": (APP,), "api_keys": (KEY,)}, {}], ids=["another-origin-configured", "none-configured"]
)
@bounded(60)
async def test_an_unconfigured_origin_gets_no_allow_headers(server, client, admin, server_settings, openapi):
    foreign = [ATTACKER, "null", "http://app.example", "https://app.example:8443"]
    if not server_settings:
        foreign.append(APP)
    for http, _port_, get, post, _body in _both(server, client, admin):
        for origin in foreign:
            preflight = await http.options(post, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            _refused(preflight, 403, "origin_not_allowed", origin, openapi)
            _no_cors_headers(preflight)
        if http is admin:
            # A GET answers (a page cannot read it without the header), and says nothing to the page.
            response = await http.get(get, headers={"Origin": ATTACKER})
            assert response.status_code == 200
            _no_cors_headers(response)


def test_the_settings_from_the_environment_the_file_and_flags(tmp_path):
    config = Config.from_environment(
        env={"MLX_ALLOWED_HOSTS": " mlx.example.net, [::2] ,", "MLX_CORS_ORIGINS": "https://App.example/, http://localhost:5173"}
    )
    assert config.allowed_hosts == ("mlx.example.net", "::2")
    assert config.cors_origins == ("https://app.example", "http://localhost:5173")
    assert config.describe()["allowed_hosts"] == ("mlx.example.net", "::2")
    config_file = tmp_path / "mlxtrio.toml"
    config_file.write_text('allowed_hosts = ["a.example"]\ncors_origins = ["*"]\n')
    from_file = Config.from_environment(env={"MLX_CONFIG": str(config_file)})
    assert (from_file.allowed_hosts, from_file.cors_origins) == (("a.example",), ("*",))
    assert Config.from_environment(env={}, allowed_hosts=("b.example",)).allowed_hosts == ("b.example",)
    assert Config.from_environment(env={}).allowed_hosts == Config.from_environment(env={}).cors_origins == ()
    for env, named in (
        ({"MLX_ALLOWED_HOSTS": "mlx.example.net:8080"}, "mlx.example.net:8080"),
        ({"MLX_ALLOWED_HOSTS": "http://mlx.example.net"}, "http://mlx.example.net"),
        ({"MLX_CORS_ORIGINS": "app.example"}, "app.example"),
        ({"MLX_CORS_ORIGINS": "https://app.example/path"}, "https://app.example/path"),
        ({"MLX_CORS_ORIGINS": "null"}, "null"),
    ):
        with pytest.raises(ValueError, match=named):
            Config.from_environment(env=env)


@bounded(60)
async def test_the_command_line_flags_reach_the_settings():
    """``--allowed-host`` and ``--cors-origin`` (each repeatable) are checked at start like the rest (exit status 2)."""
    for flags, named in ((["--allowed-host", "a.example", "--allowed-host", "b.example:80"], "b.example:80"), (["--cors-origin", "app.example"], "app.example")):
        result = await trio.run_process(
            [sys.executable, "-m", "mlxtrio", "serve", "--port", "0", "--admin-port", "0", *flags], capture_stderr=True, check=False
        )
        assert result.returncode == 2 and b"invalid setting" in result.stderr and named.encode() in result.stderr, result.stderr
