"""Worker lifecycle against the real server: crashes, hangs, idle unload, timeouts, disconnects, admin."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from functools import partial

import pytest
import trio

from ..helpers import bounded, status, worker_entry

# About 6 s of generation for the demo model on a small machine: still running when a fault lands.
LONG = {"model": "demo", "prompt": "Tell me everything.", "max_tokens": 4000, "ignore_eos": True}


async def _first_content(lines) -> None:  # noqa: ANN001
    async for line in lines:
        if line.startswith("data: ") and '"text":"' in line and '"text":""' not in line:
            return


async def _signal_worker_mid_stream(client, admin, signum: int) -> tuple[int, float, list[str]]:  # noqa: ANN001
    """Stream a long request, signal its worker after the first text, and read the stream out.

    Returns the worker's pid, seconds from the signal to the stream's end, and its remaining events.
    """
    async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
        lines = response.aiter_lines()
        await _first_content(lines)
        pid = (await worker_entry(admin))["pid"]
        os.kill(pid, signum)
        signalled_at = time.monotonic()
        rest = [line async for line in lines if line.startswith("data: ")]
        return pid, time.monotonic() - signalled_at, rest


async def _active_sequences(admin) -> int:  # noqa: ANN001
    report = (await admin.get("/admin/health")).json()
    return report["workers"][0]["active_sequences"]


async def _wait_until_idle_in_worker(admin) -> None:  # noqa: ANN001
    # The worker's own count, through a ping: no event reaches the test from inside it.
    while await _active_sequences(admin) != 0:
        await trio.sleep(0.02)


@bounded(120)
async def test_worker_sigkill_mid_stream_fails_fast_and_next_request_succeeds(client, admin):
    pid, ended_after, rest = await _signal_worker_mid_stream(client, admin, signal.SIGKILL)
    assert ended_after < 1.0, ended_after
    last = json.loads(rest[-1][len("data: ") :])
    assert last["error"]["code"] == "worker_crashed", last
    assert "data: [DONE]" not in rest
    entry = await worker_entry(admin)
    assert entry["restarts"] == 1 and entry["pid"] is None and entry["state"] == "unloaded"
    again = await client.post("/v1/completions", json={**LONG, "max_tokens": 5})
    assert again.status_code == 200
    assert (await worker_entry(admin))["pid"] not in (None, pid)


@bounded(120)
async def test_every_in_flight_request_learns_of_a_crash(client, admin):
    outcomes: list[int] = []

    async def one() -> None:
        response = await client.post("/v1/completions", json=LONG)
        outcomes.append(response.status_code)
        assert response.json()["error"]["code"] == "worker_crashed"

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
        await (await client.post("/v1/completions", json={**LONG, "max_tokens": 1})).aread()
        while (await worker_entry(admin))["active_requests"] < 4:
            await trio.sleep(0.02)
        os.kill((await worker_entry(admin))["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
    assert time.monotonic() - killed_at < 1.0
    assert outcomes == [503] * 4


@pytest.mark.parametrize("server_settings", [{"idle_timeout": 0.5}])
@bounded(60)
async def test_idle_worker_is_unloaded_and_reloaded_on_demand(client, admin, server):
    assert (await client.post("/v1/completions", json={**LONG, "max_tokens": 2})).status_code == 200
    pid = (await worker_entry(admin))["pid"]
    worker = await server.state.supervisor.served_model("demo")
    await worker.wait_stopped()
    entry = await worker_entry(admin)
    assert (entry["state"], entry["pid"], entry["restarts"]) == ("unloaded", None, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped: its memory is back with the system
    assert (await client.post("/v1/completions", json={**LONG, "max_tokens": 2})).status_code == 200
    assert (await worker_entry(admin))["pid"] not in (None, pid)


@pytest.mark.parametrize("server_settings", [{"request_timeout": 0.5}])
@bounded(60)
async def test_request_timeout_is_a_504_and_frees_the_sequence(client, admin, openapi):
    # Loaded first: the timeout covers the load too, which takes longer than 0.5 s.
    assert (await admin.post("/admin/load", json={"model": "demo"})).status_code == 200
    started = time.monotonic()
    response = await client.post("/v1/completions", json=LONG)
    assert response.status_code == 504
    assert time.monotonic() - started < 3
    openapi.validate(response.json(), "ErrorResponse")
    with trio.fail_after(5):
        await _wait_until_idle_in_worker(admin)
    async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as streamed:
        events = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1][len("data: ") :])["error"]["code"] == "timeout"
    with trio.fail_after(5):
        await _wait_until_idle_in_worker(admin)


@bounded(60)
async def test_client_disconnect_stops_generation_in_the_worker(client, admin):
    async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
        await _first_content(response.aiter_lines())
        assert await _active_sequences(admin) == 1
    # The connection is closed mid-stream.
    with trio.fail_after(5):
        await _wait_until_idle_in_worker(admin)
    assert (await worker_entry(admin))["active_requests"] == 0


@pytest.mark.parametrize("server_settings", [{"hang_timeout": 1.0}])
@bounded(60)
async def test_hung_worker_is_killed_and_restarted(client, admin):
    _, ended_after, rest = await _signal_worker_mid_stream(client, admin, signal.SIGSTOP)
    assert 0.9 < ended_after < 3.0
    error = json.loads(rest[-1][len("data: ") :])["error"]
    assert "no progress" in error["message"]
    assert (await worker_entry(admin))["restarts"] == 1
    assert (await client.post("/v1/completions", json={**LONG, "max_tokens": 2})).status_code == 200


@pytest.mark.parametrize("server_settings", [{"memory_budget_bytes": 1000}])
@bounded(60)
async def test_model_over_the_memory_budget_is_refused_with_507(client, admin, openapi):
    response = await client.post("/v1/completions", json={**LONG, "max_tokens": 2})
    assert response.status_code == 507
    openapi.validate(response.json(), "ErrorResponse")
    assert "memory budget" in response.json()["error"]["message"]
    entry = await worker_entry(admin)
    assert entry["state"] == "failed" and "memory budget" in entry["failure"]


@bounded(60)
async def test_failed_loads_back_off_instead_of_looping(client, admin):
    for attempt in (1, 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(admin.post, "/admin/load", json={"model": "demo"}))
            while (entry := await worker_entry(admin))["state"] != "loading" or entry["pid"] is None:
                await trio.sleep(0.01)
            os.kill(entry["pid"], signal.SIGKILL)  # dies while loading
        entry = await worker_entry(admin)
        assert entry["state"] == "failed" and entry["loads"] == attempt
    # The first death was retried at once; the second backs off.
    assert entry["retry_at"] - time.time() > 1.0
    # Within the back-off: refused at once, with Retry-After, and no new worker.
    started = time.monotonic()
    response = await client.post("/v1/completions", json={**LONG, "max_tokens": 2})
    assert response.status_code == 503 and time.monotonic() - started < 0.5
    assert int(response.headers["Retry-After"]) >= 1
    assert (await worker_entry(admin))["pid"] is None
    # After it, a new attempt loads.
    await trio.sleep(max(0.0, entry["retry_at"] - time.time()) + 0.05)
    assert (await client.post("/v1/completions", json={**LONG, "max_tokens": 2})).status_code == 200


@bounded(60)
async def test_admin_status_load_health_unload(admin, openapi):
    body = await status(admin)
    assert body["workers"] == [
        {
            "model": "demo", "pid": None, "state": "unloaded", "restarts": 0, "loads": 0, "loaded_at": None,
            "last_used_at": None, "memory_bytes": None, "engine": None, "active_requests": 0, "queued_requests": 0, "failure": None, "retry_at": None,
            "restart_causes": {}, "last_crash": None, "load_seconds": None, "unload_at": None, "cpus": [], "allocator": None, "blas": None,
            "scheduling": None, "channel": None, "routes": None, "ranks": [],
        }
    ]
    for key in ("ram_tier", "ram_bytes", "memory_budget_bytes", "idle_timeout", "request_timeout", "model"):
        assert key in body["config"]
    loaded = (await admin.post("/admin/load", json={"model": "demo"})).json()
    assert loaded["state"] == "ready" and loaded["pid"]
    entry = await worker_entry(admin)
    assert entry["memory_bytes"] > 0 and entry["loaded_at"] <= time.time()
    health = (await admin.get("/admin/health")).json()
    assert health["ok"] and health["workers"][0]["round_trip_ms"] < 1000
    assert (await admin.post("/admin/unload")).json() == {"unloaded": ["demo"]}
    with pytest.raises(ProcessLookupError):
        os.kill(loaded["pid"], 0)
    assert (await worker_entry(admin))["state"] == "unloaded"
    bad = await admin.post("/admin/load", json={"model": "../../etc"})
    assert bad.status_code == 404
    openapi.validate(bad.json(), "ErrorResponse")


@bounded(60)
async def test_concurrent_first_requests_share_one_load(client, admin):
    codes: list[int] = []

    async def one() -> None:
        codes.append((await client.post("/v1/completions", json={**LONG, "max_tokens": 2})).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert codes == [200] * 5
    assert (await worker_entry(admin))["loads"] == 1


@bounded(60)
async def test_clients_that_hang_up_at_once_leave_nothing_behind(server, admin):
    """Requests whose client is gone before (or while) the response starts must not hold a slot."""
    assert (await admin.post("/admin/load", json={"model": "demo"})).status_code == 200
    host, port = server.openai_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({**LONG, "stream": True}).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    for index in range(20):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(head.encode() + body)
        if index % 2:
            await stream.receive_some(1)  # some hang up once the response has begun
        await stream.aclose()
    with trio.fail_after(10):
        while (await worker_entry(admin))["active_requests"] or await _active_sequences(admin):
            await trio.sleep(0.02)


@pytest.mark.parametrize("server_settings", [{"grace_period": 1.0}])
@bounded(60)
async def test_requests_past_the_grace_period_are_ended_by_the_server(server, client, admin, openapi, caplog):
    """A graceful stop ends what outlives its grace period as its own doing: 503 ``shutting_down``, in the stream and in the log."""
    caplog.set_level(logging.INFO, logger="mlxtrio")
    assert (await admin.post("/admin/load", json={"model": "demo"})).status_code == 200
    answers: list = []

    async def not_streamed() -> None:
        answers.append(await client.post("/v1/completions", json=LONG))

    async with trio.open_nursery() as nursery:
        # Each takes seconds longer than the grace period.
        async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as streamed:
            lines = streamed.aiter_lines()
            await _first_content(lines)
            nursery.start_soon(not_streamed)
            # Asked in-process: an admin request just answered could still count as in flight.
            while server.state.supervisor.describe()[0]["active_requests"] < 2:
                await trio.sleep(0.02)
            server.shutdown()
            stopped_at = time.monotonic()
            rest = [line async for line in lines if line.startswith("data: ")]
        ended_after = time.monotonic() - stopped_at
    assert 1.0 <= ended_after < 3.0, ended_after
    last = json.loads(rest[-1][len("data: ") :])
    openapi.validate(last, "ErrorResponse")
    assert last["error"]["code"] == "shutting_down" and last["error"]["type"] == "service_unavailable", last
    assert "data: [DONE]" not in rest
    (answer,) = answers
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down", answer.text
    openapi.validate(answer.json(), "ErrorResponse")
    messages = [record.getMessage() for record in caplog.records]
    assert "stopping: waiting up to 1 s for 2 requests in flight" in messages, messages
    assert any("grace period (1 s) is over: ending the 2 requests" in message for message in messages), messages
    ended = [record for record in caplog.records if record.name == "mlxtrio.requests" and record.endpoint == "/v1/completions"]
    assert sorted((record.stream, record.status) for record in ended) == [(False, 503), (True, 503)]


@bounded(60)
async def test_a_loaded_idle_model_reads_the_same_in_every_status_snapshot(client, server):
    """status.json is rewritten only when its bytes change: a loaded, idle model's times must not move
    (its load and last use were once recomputed from two clocks at each read, so every snapshot differed)."""
    assert (await client.post("/v1/completions", json={"model": "demo", "prompt": "hi", "max_tokens": 2})).status_code == 200
    supervisor = server.state.supervisor
    first = json.dumps(supervisor.describe(ipc=False))
    for _ in range(5):
        await trio.sleep(0.01)  # trio's clock and the wall clock move on between reads
        assert json.dumps(supervisor.describe(ipc=False)) == first
