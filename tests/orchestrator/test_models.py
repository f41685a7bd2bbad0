"""Several models at once, each in its own worker: parallel, least-recently-used eviction, keep_alive."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from mlxtrio._models import weights_size
from mlxtrio.worker._demo import ensure_demo_model

from ..helpers import bounded, status, worker_entry

A, B = "test/tiny-a", "test/tiny-b"
LONG = {"prompt": "Tell me everything.", "max_tokens": 4000, "ignore_eos": True}


def _cached_repo(hub: Path, repo_id: str, source: Path) -> Path:
    """A Hugging Face cache entry for ``repo_id`` holding a copy of ``source``."""
    snapshot = hub / ("models--" + repo_id.replace("/", "--")) / "snapshots" / "0123abcd"
    shutil.copytree(source, snapshot)
    return snapshot


@pytest.fixture
def server_settings(cache_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> dict:
    """Two more models in the Hugging Face cache, copies of the demo; at most two loaded unless a test says.

    ``budget_in_models`` (indirect parameter) sets the memory budget to that many models' weights.
    """
    demo = ensure_demo_model(cache_dir)
    for repo_id in (A, B):
        _cached_repo(tmp_path / "hf-hub", repo_id, demo)
    settings = {"max_loaded_models": 2, **getattr(request, "param", {})}
    if "budget_in_models" in settings:
        settings["memory_budget_bytes"] = int(weights_size(demo) * settings.pop("budget_in_models"))
    return settings


async def _ok(client, model: str, **extra) -> dict:  # noqa: ANN001, ANN003
    response = await client.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2, **extra})
    assert response.status_code == 200, response.text
    return response.json()


async def _states(admin) -> dict[str, str]:  # noqa: ANN001
    return {entry["model"]: entry["state"] for entry in (await status(admin))["workers"]}


@bounded(90)
async def test_models_run_in_parallel_in_their_own_workers(client, admin):
    async with trio.open_nursery() as nursery:
        for model in ("demo", A):
            nursery.start_soon(_ok, client, model)
    entries = {entry["model"]: entry for entry in (await status(admin))["workers"]}
    assert entries["demo"]["state"] == entries[A]["state"] == "ready"
    assert entries["demo"]["pid"] != entries[A]["pid"]
    listed = {model["id"] for model in (await client.get("/v1/models")).json()["data"]}
    assert {"demo", A, B} <= listed


@bounded(90)
async def test_loading_one_more_evicts_the_least_recently_used(client, admin, server):
    await _ok(client, "demo")
    await _ok(client, A)
    await _ok(client, "demo")  # A is now the least recently used
    await _ok(client, B)
    assert await _states(admin) == {"demo": "ready", A: "unloaded", B: "ready"}
    evicted = await server.state.supervisor.served_model(A)
    assert evicted.statistics().restarts == 0  # an eviction is no crash
    await _ok(client, A)  # and now demo is the least recently used
    assert await _states(admin) == {"demo": "unloaded", A: "ready", B: "ready"}


@pytest.mark.parametrize("server_settings", [{"max_loaded_models": 1}], indirect=True)
@bounded(90)
async def test_busy_models_are_not_evicted(client, admin, server):
    assert server.state.config.max_loaded_models == 1
    async with client.stream("POST", "/v1/completions", json={"model": "demo", **LONG, "stream": True}) as streamed:
        # Held until the end: a dropped line iterator is finalized, which closes the stream.
        lines = streamed.aiter_lines()
        async for line in lines:
            if line.startswith("data: {"):
                break
        assert '"error"' not in line, line
        busy = await worker_entry(admin, "demo")
        assert (busy["state"], busy["active_requests"]) == ("ready", 1), busy
        refused = await client.post("/v1/completions", json={"model": A, "prompt": "hi", "max_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_room", (
            refused.text, await worker_entry(admin, "demo"), await worker_entry(admin, A)
        )
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await worker_entry(admin, "demo"))["state"] == "ready"
    # The stream is gone; demo is idle now and gives way.
    with trio.fail_after(10):
        while (await worker_entry(admin, "demo"))["active_requests"]:
            await trio.sleep(0.02)
    await _ok(client, A)
    assert (await worker_entry(admin, "demo"))["state"] == "unloaded"


@bounded(60)
async def test_a_model_too_large_for_the_budget_is_refused_and_evicts_nothing(client, admin, server, tmp_path):
    big = tmp_path / "hf-hub" / "models--test--huge" / "snapshots" / "0123abcd"
    shutil.copytree(tmp_path / "hf-hub" / "models--test--tiny-a" / "snapshots" / "0123abcd", big)
    with open(big / "model.safetensors", "r+b") as weights:
        weights.truncate(server.state.config.memory_budget_bytes + 1)  # sparse: no disk used
    await _ok(client, "demo")
    refused = await client.post("/v1/completions", json={"model": "test/huge", "prompt": "hi", "max_tokens": 2})
    assert refused.status_code == 507 and refused.json()["error"]["code"] == "model_too_large"
    assert (await worker_entry(admin, "demo"))["state"] == "ready"


@pytest.mark.parametrize("server_settings", [{"budget_in_models": 1.5}], indirect=True)
@bounded(60)
async def test_the_memory_budget_counts_every_loaded_model(client, admin, server):
    # Room for one of these models, not two, though two may be loaded by count.
    assert server.state.config.max_loaded_models == 2
    await _ok(client, A)
    await _ok(client, B)
    assert await _states(admin) == {"demo": "unloaded", A: "unloaded", B: "ready"}


@bounded(60)
async def test_keep_alive_zero_unloads_after_the_request(client, admin, server):
    await _ok(client, "demo", keep_alive=0)
    with trio.fail_after(10):
        await (await server.state.supervisor.served_model("demo")).wait_stopped()
    entry = await worker_entry(admin, "demo")
    assert entry["state"] == "unloaded" and entry["restarts"] == 0


@pytest.mark.parametrize("server_settings", [{"idle_timeout": 0.3}], indirect=True)
@bounded(60)
async def test_keep_alive_overrides_the_idle_timeout(client, admin, server):
    assert server.state.config.idle_timeout == 0.3
    await _ok(client, "demo", keep_alive="-1s")  # negative: stay loaded
    await trio.sleep(1.0)  # well past the idle timeout: nothing happens, which takes waiting to see
    assert (await worker_entry(admin, "demo"))["state"] == "ready"
    await _ok(client, "demo", keep_alive="0.5s")
    started = trio.current_time()
    await (await server.state.supervisor.served_model("demo")).wait_stopped()
    assert 0.4 < trio.current_time() - started < 3


@bounded(30)
async def test_keep_alive_must_be_a_duration(client, openapi):
    for bad in ("soon", "5 minutes", "1d", ""):
        response = await client.post("/v1/completions", json={"model": "demo", "prompt": "hi", "keep_alive": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == "keep_alive"
        openapi.validate(response.json(), "ErrorResponse")


def test_durations_parse_like_ollama():
    from mlxtrio.api.openai._schemas import CompletionRequest

    def seconds(value: object) -> float | None:
        return CompletionRequest(model="m", prompt="p", keep_alive=value).keep_alive_seconds()

    assert seconds(None) is None and seconds(30) == 30 and seconds(-1) == -1
    assert seconds("5m") == 300 and seconds("1h30m") == 5400 and seconds("250ms") == 0.25 and seconds("-1m") == -60
