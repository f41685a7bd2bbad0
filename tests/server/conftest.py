"""Fixtures for server tests: the real server in the test's nursery, a real worker, real HTTP."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema
import trio

from mlxtrio import Config, ServerHandle, main

OPENAPI = Path(__file__).resolve().parents[2].parent / "shared" / "openai" / "openapi.json"


def make_config(cache_dir: Path, tmp_path: Path, **overrides: object) -> Config:
    settings: dict[str, object] = {
        "port": 0,
        "admin_port": 0,
        "cache_dir": cache_dir,
        "hf_hub_cache": tmp_path / "hf-hub",
        "idle_timeout": 300.0,
        "request_timeout": 60.0,
        "grace_period": 10.0,
    }
    settings.update(overrides)
    # An empty environment: the developer's MLX_* variables must not leak into tests.
    return Config.from_environment(env={}, **settings)


@pytest.fixture
def server_settings() -> dict:
    """Override in a test module (or parametrize) to change the server's settings."""
    return {}


@pytest.fixture
async def server(nursery: trio.Nursery, cache_dir: Path, tmp_path: Path, server_settings: dict) -> ServerHandle:
    config = make_config(cache_dir, tmp_path, **server_settings)
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[ServerHandle]) -> None:
        try:
            await main(config, handle_signals=False, task_status=task_status)
        finally:
            done.set()

    handle: ServerHandle = await nursery.start(run)
    yield handle
    handle.shutdown()
    with trio.fail_after(30):
        await done.wait()


@pytest.fixture
async def client(server: ServerHandle) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=server.openai_url, timeout=60) as client:
        yield client


@pytest.fixture
async def admin(server: ServerHandle) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=server.admin_url, timeout=60) as client:
        yield client


def _honour_nullable(node: object) -> object:
    """OpenAI's 3.1 document still says ``nullable: true`` (OpenAPI 3.0) in places; JSON Schema ignores it.

    Read it as it is meant: ``type: X`` becomes ``type: [X, "null"]``.
    """
    if isinstance(node, dict):
        node = {key: _honour_nullable(value) for key, value in node.items()}
        if node.pop("nullable", False):
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            if isinstance(node.get("enum"), list) and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
            if "$ref" in node or "allOf" in node or "anyOf" in node or "oneOf" in node:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_honour_nullable(item) for item in node]
    return node


class OpenAPISchemas:
    """Validates payloads against a component schema of OpenAI's published OpenAPI description."""

    def __init__(self, path: Path) -> None:
        document = _honour_nullable(json.loads(path.read_text()))
        resource = referencing.Resource.from_contents(document, default_specification=referencing.jsonschema.DRAFT202012)
        self._registry = referencing.Registry().with_resource("openapi.json", resource)

    def validate(self, payload: object, component: str) -> None:
        schema = {"$ref": f"openapi.json#/components/schemas/{component}"}
        jsonschema.Draft202012Validator(schema, registry=self._registry).validate(payload)


@pytest.fixture(scope="session")
def openapi() -> OpenAPISchemas:
    if not OPENAPI.is_file():
        pytest.skip(f"OpenAI's OpenAPI description is not at {OPENAPI} (a checkout without ../shared)")
    return OpenAPISchemas(OPENAPI)


def sse_events(text: str) -> list[object]:
    """The data payloads of an SSE body: JSON objects, and the string "[DONE]"."""
    events: list[object] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def status(admin: httpx.AsyncClient) -> dict:
    response = await admin.get("/admin/status")
    assert response.status_code == 200
    return response.json()


async def worker_entry(admin: httpx.AsyncClient, model: str = "demo") -> dict:
    for entry in (await status(admin))["workers"]:
        if entry["model"] == model:
            return entry
    raise AssertionError(f"no worker for {model}")


def worker_maps(pid: int) -> str:
    """A worker's memory map (Linux): which shared libraries it runs with."""
    return Path(f"/proc/{pid}/maps").read_text()


async def loaded_entry(admin: httpx.AsyncClient, model: str = "demo") -> dict:
    """``model`` loaded through the admin API, then its worker's status entry."""
    response = await admin.post("/admin/load", json={"model": model})
    assert response.status_code == 200, response.text
    return await worker_entry(admin, model)


__all__ = ["loaded_entry", "make_config", "partial", "sse_events", "status", "worker_entry", "worker_maps"]
