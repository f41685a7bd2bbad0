"""The fault matrix against the real server and a real worker (docs/RELIABILITY.md).

Faults come from outside (SIGKILL, SIGSTOP) or from failpoints armed through
MLXTRIO_FAILPOINTS, which the worker inherits (mlxtrio/worker/_failpoints.py).
Each test checks what the client sees, how fast, what /admin/status says, and
that the next request is served.
"""

from __future__ import annotations

import json
import os
import signal
import time

import msgspec
import pytest
import trio

from ..helpers import bounded, worker_entry

SHORT = {"model": "demo", "prompt": "Hello", "max_tokens": 3, "ignore_eos": True}
LONG = {"model": "demo", "prompt": "Tell me everything.", "max_tokens": 4000, "ignore_eos": True}
# About 3,500 prompt tokens: hundreds of prefill steps at a prefill step size of 8.
LONG_PROMPT = {"model": "demo", "prompt": "the " * 3500, "max_tokens": 10, "ignore_eos": True}


def _data(line: str) -> dict:
    return json.loads(line[len("data: ") :])


async def _ok(client) -> None:  # noqa: ANN001
    response = await client.post("/v1/completions", json=SHORT)
    assert response.status_code == 200, response.text


async def _worker(server):  # noqa: ANN001, ANN202
    return await server.state.supervisor.served_model("demo")


async def _stream_events(client, body: dict, started: trio.Event, texts: list[str], events: list[dict]) -> None:  # noqa: ANN001
    """Stream ``body``; set ``started`` at the first text; keep every event (an error response before the stream: its body)."""
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            events.append({"status": response.status_code, **json.loads(await response.aread())})
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = _data(line)
            events.append(event)
            if "choices" in event and event["choices"][0]["text"]:
                texts.append(event["choices"][0]["text"])
                started.set()


# --- SIGKILL at every stage --------------------------------------------------------


@bounded(60)
async def test_sigkill_while_idle(client, admin, server):
    pid = (await admin.post("/admin/load", json={"model": "demo"})).json()["pid"]
    worker = await _worker(server)
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(1):
        await worker.wait_stopped()
    entry = await worker_entry(admin)
    assert (entry["state"], entry["pid"], entry["restarts"]) == ("unloaded", None, 1)
    assert entry["restart_causes"] == {"crash": 1}
    assert "SIGKILL" in entry["last_crash"]
    await _ok(client)


@bounded(60)
async def test_sigkill_while_loading_fails_the_waiting_request_and_the_next_one_loads(client, admin):
    outcome: list = []

    async def first() -> None:
        outcome.append(await client.post("/v1/completions", json=SHORT))
        outcome.append(time.monotonic())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        while (entry := await worker_entry(admin))["state"] != "loading" or entry["pid"] is None:
            await trio.sleep(0.01)
        os.kill(entry["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
    response, ended_at = outcome
    assert ended_at - killed_at < 1.0
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "load_failed" and "SIGKILL" in error["message"]
    # One death while loading may be bad luck: the next request loads at once.
    await _ok(client)
    assert (await worker_entry(admin))["loads"] == 2


@pytest.mark.parametrize("server_settings", [{"prefill_step_size": 8}])
@bounded(60)
async def test_sigkill_during_prefill(client, admin):
    events: list[dict] = []
    texts: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stream_events, client, LONG_PROMPT, trio.Event(), texts, events)
        # The worker answers pings between prefill chunks: one sequence, no text yet.
        while [entry.get("active_sequences") for entry in (await admin.get("/admin/health")).json()["workers"]] != [1]:
            await trio.sleep(0.01)
        os.kill((await worker_entry(admin))["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
    assert time.monotonic() - killed_at < 1.0
    assert texts == [], "the kill came after prefill; the prompt is too short for this machine"
    # Admitted, its stream had begun (a 200 with no event yet): the crash is the stream's one event, an error.
    assert [(event.get("status"), event["error"]["code"]) for event in events] == [(None, "worker_crashed")]
    await _ok(client)


@bounded(90)
async def test_sigkill_during_decode_with_8_streams(client, admin):
    streams = [(trio.Event(), [], []) for _ in range(8)]
    async with trio.open_nursery() as nursery:
        for started, texts, events in streams:
            nursery.start_soon(_stream_events, client, LONG, started, texts, events)
        for started, _, _ in streams:
            await started.wait()
        os.kill((await worker_entry(admin))["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
    assert time.monotonic() - killed_at < 1.0
    for _, texts, events in streams:
        assert texts and events[-1]["error"]["code"] == "worker_crashed", events[-1]
    entry = await worker_entry(admin)
    assert entry["active_requests"] == 0 and entry["restarts"] == 1
    await _ok(client)


# --- hangs -----------------------------------------------------------------------------


@pytest.mark.parametrize("server_settings", [{"hang_timeout": 1.0}])
@bounded(60)
async def test_a_step_that_never_returns_is_a_hang(client, admin, monkeypatch):
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "step=hang@5")
    started = time.monotonic()
    response = await client.post("/v1/completions", json=LONG)
    assert 1.0 < time.monotonic() - started < 4.0
    assert response.status_code == 503
    assert "no progress for 1 s" in response.json()["error"]["message"]
    entry = await worker_entry(admin)
    assert entry["restart_causes"] == {"hang": 1} and "no progress" in entry["last_crash"]
    monkeypatch.delenv("MLXTRIO_FAILPOINTS")
    await _ok(client)


# --- exceptions inside the model step ------------------------------------------------------


@bounded(60)
async def test_out_of_memory_in_a_step_is_a_507_and_the_worker_survives(client, admin, openapi, monkeypatch):
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "step=oom@8")
    pid = (await admin.post("/admin/load", json={"model": "demo"})).json()["pid"]
    response = await client.post("/v1/completions", json=LONG)
    assert response.status_code == 507
    openapi.validate(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert error["code"] == "out_of_memory" and "Unable to allocate" in error["message"]
    await _ok(client)
    entry = await worker_entry(admin)
    assert entry["pid"] == pid and entry["restarts"] == 0


@bounded(60)
async def test_finished_caches_that_cannot_be_kept_empty_the_prompt_cache_and_the_worker_survives(client, admin, monkeypatch):
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "settle=oom@1")
    pid = (await admin.post("/admin/load", json={"model": "demo"})).json()["pid"]
    for kept in (False, True):
        await _ok(client)
        health = (await admin.get("/admin/health")).json()["workers"][0]
        # The first request's cache could not be computed and went; the next one's stays.
        assert (health["prompt_cache_bytes"] > 0) == kept, health
    entry = await worker_entry(admin)
    assert entry["pid"] == pid and entry["restarts"] == 0


@pytest.mark.parametrize("server_settings", [{"decode_concurrency": 1}])
@bounded(60)
async def test_a_failing_sequence_leaves_the_others_running(client, admin, monkeypatch):
    """The sequential engine: each sequence steps on its own, so one fails alone."""
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "step=oom@5")
    assert (await admin.post("/admin/load", json={"model": "demo"})).json()["state"] == "ready"
    responses: list = []

    async def one() -> None:
        responses.append(await client.post("/v1/completions", json={**LONG, "max_tokens": 30}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
    assert sorted(response.status_code for response in responses) == [200, 507]
    done = next(response for response in responses if response.status_code == 200).json()
    assert done["usage"]["completion_tokens"] == 30
    assert (await worker_entry(admin))["restarts"] == 0


@bounded(60)
async def test_generation_that_keeps_failing_restarts_the_worker(client, admin, server, monkeypatch):
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "step=error")
    first = await client.post("/v1/completions", json=SHORT)
    assert first.status_code == 500
    assert first.json()["error"]["code"] == "generation_failed"
    assert "injected error" in first.json()["error"]["message"]
    worker = await _worker(server)
    # The third failure in a row, with no good step between: the worker exits to be replaced.
    second = await client.post("/v1/completions", json=SHORT)
    assert second.status_code == 503 and "repeated generation failures" in second.json()["error"]["message"]
    with trio.fail_after(5):
        await worker.wait_stopped()
    assert (await worker_entry(admin))["restart_causes"] == {"generation": 1}
    monkeypatch.delenv("MLXTRIO_FAILPOINTS")
    await _ok(client)


# --- corrupt and unknown frames ----------------------------------------------------------------


@bounded(60)
async def test_a_corrupt_frame_from_the_worker_restarts_it(client, admin, monkeypatch):
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "send=corrupt@3")  # Hello, Ready, then this
    started = time.monotonic()
    response = await client.post("/v1/completions", json=LONG)
    assert response.status_code == 503 and time.monotonic() - started < 10
    assert "corrupt message" in response.json()["error"]["message"]
    assert (await worker_entry(admin))["restart_causes"] == {"protocol": 1}
    monkeypatch.delenv("MLXTRIO_FAILPOINTS")
    await _ok(client)


@pytest.mark.parametrize(
    "frame", [b"\xc1 not msgpack", msgspec.msgpack.encode({"type": "NoSuchMessage"})], ids=["corrupt", "unknown"]
)
@bounded(60)
async def test_a_corrupt_or_unknown_frame_to_the_worker_restarts_it(client, admin, server, frame):
    started, texts, events = trio.Event(), [], []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stream_events, client, LONG, started, texts, events)
        await started.wait()
        worker = await _worker(server)
        await worker._run.process._channel.send(frame)  # noqa: SLF001 - the one way in for a bad frame
        sent_at = time.monotonic()
    assert time.monotonic() - sent_at < 1.0
    error = events[-1]["error"]
    assert error["code"] == "worker_crashed" and "could not read" in error["message"]
    assert (await worker_entry(admin))["restart_causes"] == {"protocol": 1}
    await _ok(client)


# --- crash loop while loading --------------------------------------------------------------------


@bounded(60)
async def test_a_worker_that_dies_while_loading_backs_off(client, admin, openapi, monkeypatch):
    monkeypatch.setenv("MLXTRIO_FAILPOINTS", "load=crash")
    first = await client.post("/v1/completions", json=SHORT)
    assert first.status_code == 503 and "SIGSEGV" in first.json()["error"]["message"]
    # Tried again at once, and died again: now it backs off.
    second = await client.post("/v1/completions", json=SHORT)
    assert second.status_code == 503
    entry = await worker_entry(admin)
    assert entry["state"] == "failed" and "SIGSEGV" in entry["failure"] and entry["loads"] == 2
    assert entry["retry_at"] - time.time() > 1.0
    # Within the back-off: refused at once with Retry-After, and no new process.
    started = time.monotonic()
    third = await client.post("/v1/completions", json=SHORT)
    assert third.status_code == 503 and time.monotonic() - started < 0.5
    openapi.validate(third.json(), "ErrorResponse")
    assert int(third.headers["Retry-After"]) >= 1 and "next attempt in" in third.json()["error"]["message"]
    assert (await worker_entry(admin))["loads"] == 2
