"""Worker groups for real: a two-rank pipeline of the tiny Qwen2 over mlx.distributed's ring on loopback.

``pair`` is the model split over two ranks on this machine, ``solo`` the
same model in one worker: what ``pair`` answers must be what ``solo``
answers, and any rank's end must end the group at once, and cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
import trio

from mlxtrio.ipc import list_objects

from ..group_models import QWEN2_VERSION, build_tiny_qwen2
from ..helpers import bounded, drain, kill_if_running, start_server, worker_entry

PROMPTS = [f"Tell me story number {number} about a server" for number in range(8)]


@pytest.fixture
def tiny_qwen2(cache_dir: Path) -> Path:
    return build_tiny_qwen2(cache_dir / "models" / f"tiny-qwen2-v{QWEN2_VERSION}")


def _models_file(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f'[models.solo]\npath = "{model}"\n\n'
        f'[models.pair]\npath = "{model}"\nhosts = ["127.0.0.1", "127.0.0.1"]\nparallel = "pipeline"\n'
    )
    return path


@pytest.fixture
def server_settings(tmp_path: Path, tiny_qwen2: Path, request: pytest.FixtureRequest) -> dict:
    return {"config_file": _models_file(tmp_path, tiny_qwen2), **getattr(request, "param", {})}


async def _gone(pids: list[int], *, within: float) -> None:
    """Each process has exited: a pidfd turns readable then (the ranks are the server's children, not ours)."""
    with trio.fail_after(within):
        for pid in pids:
            try:
                descriptor = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # gone and reaped already
            try:
                await trio.lowlevel.wait_readable(descriptor)
            finally:
                os.close(descriptor)


async def _ranks(admin: httpx.AsyncClient) -> list[dict]:
    ranks = (await worker_entry(admin, "pair"))["ranks"]
    assert [rank["rank"] for rank in ranks] == [0, 1], ranks
    return ranks


async def _answer(client: openai.AsyncOpenAI, model: str, prompt: str, **options: object) -> str:
    options = {"max_tokens": 24, "temperature": 0, **options}
    response = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **options)
    return response.choices[0].message.content


async def _streamed(client: openai.AsyncOpenAI, model: str, prompt: str, **options: object) -> str:
    options = {"temperature": 0, **options}
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=24, stream=True, **options
    )
    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])


async def _all(run, prompts: list[str]) -> list[str]:  # noqa: ANN001
    results: list[str] = [""] * len(prompts)

    async def one(index: int) -> None:
        results[index] = await run(prompts[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(prompts)):
            nursery.start_soon(one, index)
    return results


@bounded(120)
async def test_two_ranks_answer_what_one_process_answers(server, admin):
    async with openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="none") as client:
        one = await _answer(client, "pair", PROMPTS[0])
        assert one and one == await _answer(client, "solo", PROMPTS[0])
        assert await _streamed(client, "pair", PROMPTS[1]) == await _streamed(client, "solo", PROMPTS[1])
        # Eight streams at once on the group, each sampling with a seed of its own: the batch holds them all
        # on both ranks, step by step, and every rank takes rank 0's tokens.
        def seeded(model: str):  # noqa: ANN202
            return lambda prompt: _streamed(client, model, prompt, temperature=1.0, seed=PROMPTS.index(prompt))

        pair = await _all(seeded("pair"), PROMPTS)
        assert pair == await _all(seeded("solo"), PROMPTS) and len(set(pair)) == len(PROMPTS)
        # A grammar compiles on every rank; seeded sampling takes rank 0's tokens everywhere.
        schema = {"type": "object", "properties": {"n": {"enum": [1, 2, 3]}}, "required": ["n"], "additionalProperties": False}
        structured = {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}, "max_tokens": 200}
        constrained = await _answer(client, "pair", PROMPTS[2], **structured)
        assert constrained == await _answer(client, "solo", PROMPTS[2], **structured)
        assert json.loads(constrained)["n"] in (1, 2, 3)
    ranks = await _ranks(admin)
    assert ranks[0]["pid"] == (await worker_entry(admin, "pair"))["pid"]
    assert {rank["host"] for rank in ranks} == {"127.0.0.1"} and all(rank["memory_bytes"] > 0 for rank in ranks)
    assert sorted(rank["shard"] for rank in ranks) == ["layers 0-1 of 4", "layers 2-3 of 4"]


@bounded(120)
async def test_a_rank_killed_mid_stream_fails_the_stream_at_once_and_the_next_request_gets_a_new_group(server, admin):
    async with openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="none") as client:
        await _answer(client, "pair", "warm up")
        first = await _ranks(admin)
        stream = await client.completions.create(model="pair", prompt="go", max_tokens=3000, stream=True, extra_body={"ignore_eos": True})
        with pytest.raises(openai.APIError) as failure:
            async for _ in stream:
                if not first[1].get("killed"):
                    os.kill(first[1]["pid"], signal.SIGKILL)
                    first[1]["killed"] = time.monotonic()
        assert time.monotonic() - first[1]["killed"] < 1.0
        assert "rank 1" in str(failure.value), failure.value
        await _gone([rank["pid"] for rank in first], within=5)
        assert await _answer(client, "pair", PROMPTS[0]) == await _answer(client, "solo", PROMPTS[0])
    again = await _ranks(admin)
    assert not {rank["pid"] for rank in again} & {rank["pid"] for rank in first}
    entry = await worker_entry(admin, "pair")
    assert entry["restarts"] == 1 and "rank 1" in entry["last_crash"], entry


@pytest.mark.parametrize("server_settings", [{"hang_timeout": 1.5}], indirect=True)
@bounded(120)
async def test_a_stopped_rank_is_caught_by_the_hang_timeout_and_the_whole_group_killed(server, admin):
    async with openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="none", max_retries=0) as client:
        await _answer(client, "pair", "warm up")
        ranks = await _ranks(admin)
        os.kill(ranks[1]["pid"], signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(openai.APIError) as failure:
            await _answer(client, "pair", PROMPTS[0])
        assert 1.5 <= time.monotonic() - started < 5
        assert "no progress" in str(failure.value), failure.value
        await _gone([rank["pid"] for rank in ranks], within=5)


@pytest.mark.parametrize("server_settings", [{"idle_timeout": 0.5}], indirect=True)
@bounded(60)
async def test_idle_unload_stops_every_rank(server, admin):
    async with openai.AsyncOpenAI(base_url=server.openai_url + "/v1", api_key="none") as client:
        await _answer(client, "pair", "hello")
    ranks = await _ranks(admin)
    await _gone([rank["pid"] for rank in ranks], within=10)
    entry = await worker_entry(admin, "pair")
    assert entry["state"] == "unloaded" and entry["restarts"] == 0, entry


@bounded(90)
async def test_the_servers_sigkill_leaves_no_rank_alive(cache_dir, tmp_path, tiny_qwen2):
    process, url, admin_url, log = await start_server(cache_dir, tmp_path, "--config", str(_models_file(tmp_path, tiny_qwen2)))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, process, log)
            async with httpx.AsyncClient(base_url=admin_url, timeout=60) as admin:
                loaded = await admin.post("/admin/load", json={"model": "pair"})
                assert loaded.status_code == 200, loaded.text
                pids = [rank["pid"] for rank in await _ranks(admin)]
            process.kill()
            await _gone(pids, within=10)
            nursery.cancel_scope.cancel()
        assert not [found for found in list_objects() if found.creator_pid == process.pid]
    finally:
        await kill_if_running(process)

