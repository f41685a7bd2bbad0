"""Suite-wide fixtures: nothing of ours left in /dev/shm, one model cache, the real server in the test's nursery."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio

from mlxtrio import ServerHandle, main

from mlxtrio.ipc import list_objects
from mlxtrio.ipc._names import pid_alive

from .helpers import OpenAPISchemas, make_config

OPENAPI = Path(__file__).resolve().parents[1].parent / "shared" / "openai" / "openapi.json"


def leftover_shared_objects() -> list[str]:
    """mlxtrio objects created by this test process, or by any process now dead."""
    return [
        found.entry
        for found in list_objects()
        if found.creator_pid == os.getpid() or not pid_alive(found.creator_pid)
    ]


@pytest.fixture(scope="session", autouse=True)
def no_leftover_shared_memory():
    before = set(leftover_shared_objects())
    yield
    left = sorted(set(leftover_shared_objects()) - before)
    assert not left, f"the test suite left shared-memory objects behind: {left}"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: the demo model is built once."""
    return tmp_path_factory.mktemp("mlxtrio-cache")


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


@pytest.fixture(scope="session")
def openapi() -> OpenAPISchemas:
    if not OPENAPI.is_file():
        pytest.skip(f"OpenAI's OpenAPI description is not at {OPENAPI} (a checkout without ../shared)")
    return OpenAPISchemas(OPENAPI)
