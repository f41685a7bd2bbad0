"""Helpers shared by the test suite: bounded tests, server configs and processes, SSE, admin status, OpenAI's schemas."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import httpx
import jsonschema
import referencing
import referencing.jsonschema
import trio

from mlxtrio import Config

P = ParamSpec("P")
T = TypeVar("T")


def bounded(seconds: float) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Run an async test under ``trio.fail_after``: a regression fails it instead of hanging the suite.

    (A cancel scope in a pytest-trio fixture does not cover the test's own task.)
    """

    def decorate(test: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(test)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            with trio.fail_after(seconds):
                return await test(*args, **kwargs)

        return run

    return decorate


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


LONG_STREAM = {"model": "demo", "prompt": "go", "max_tokens": 1500, "ignore_eos": True, "stream": True}


def server_env(cache_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLX_CACHE_DIR": str(cache_dir),
        "HF_HOME": str(tmp_path / "hf"),
        "MLX_PORT": "0",
        "MLX_ADMIN_PORT": "0",
    }


async def start_server(
    cache_dir: Path, tmp_path: Path, *extra: str, own_session: bool = False
) -> tuple[trio.Process, str, str, list[bytes]]:
    """Start ``python -m mlxtrio serve`` on free ports; return it, its two URLs and its log so far."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "mlxtrio", "serve", *extra],
        env=server_env(cache_dir, tmp_path),
        stderr=-1,
        start_new_session=own_session,
    )
    log: list[bytes] = []
    buffer = b""
    with trio.fail_after(30):
        while (match := re.search(rb"OpenAI API on (\S+), admin API on (\S+)", buffer)) is None:
            chunk = await process.stderr.receive_some()
            assert chunk, b"".join(log).decode()
            log.append(chunk)
            buffer += chunk
    return process, match.group(1).decode(), match.group(2).decode(), log


async def kill_if_running(process: trio.Process) -> None:
    """A test's last word on its server: whatever happened, it is not left behind."""
    if process.returncode is None:
        process.kill()
    await process.wait()


async def drain(process: trio.Process, log: list[bytes]) -> None:
    while chunk := await process.stderr.receive_some():
        log.append(chunk)


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
