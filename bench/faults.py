"""The fault matrix, timed: inject each fault into a real server and measure what the client sees.

    python -m bench.faults [--repeat 3] [--json OUT]

For each fault: how long from the fault to the affected request's error
("error_s"), and from the fault to the next successful request ("recovered_s",
which includes starting and loading a fresh worker where one is needed).
Medians over ``--repeat`` runs. Faults come from signals (SIGKILL, SIGSTOP) or
failpoints (MLXTRIO_FAILPOINTS, docs/RELIABILITY.md). The demo
model, loopback, a fresh server per fault. docs/RELIABILITY.md records it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import trio

from ._common import write_json
from .server_process import mlxtrio_server

LONG = {"model": "demo", "prompt": "Tell me everything.", "max_tokens": 4000, "ignore_eos": True}
SHORT = {"model": "demo", "prompt": "hi", "max_tokens": 2}


@contextlib.asynccontextmanager
async def running_server(cache: Path, **env: str) -> AsyncIterator[tuple[subprocess.Popen, httpx.AsyncClient, httpx.AsyncClient]]:
    async with mlxtrio_server(cache, **env) as server:
        async with httpx.AsyncClient(base_url=server.openai_url, timeout=120) as client, httpx.AsyncClient(
            base_url=server.admin_url, timeout=30
        ) as admin:
            yield server.process, client, admin


async def worker_entry(admin: httpx.AsyncClient, state: str = "ready") -> dict:
    """The first model's /admin/status entry, once its worker is in ``state`` with a pid."""
    while True:
        workers = (await admin.get("/admin/status")).json()["workers"]
        if workers and workers[0]["state"] == state and workers[0]["pid"]:
            return workers[0]
        await trio.sleep(0.005)


async def worker_pid(admin: httpx.AsyncClient, state: str = "ready") -> int:
    return (await worker_entry(admin, state))["pid"]


async def recovered_after(client: httpx.AsyncClient, since: float) -> float:
    while True:
        response = await client.post("/v1/completions", json=SHORT)
        if response.status_code == 200:
            return time.monotonic() - since
        await trio.sleep(float(response.headers.get("Retry-After", "0.05")))


async def streams_then(client: httpx.AsyncClient, count: int, fault: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """``count`` long streams; once all have text, ``fault()``; (fault→last error, fault→next success)."""
    ready = [trio.Event() for _ in range(count)]
    ended: list[float] = []
    faulted_at: list[float] = []

    async def one(started: trio.Event) -> None:
        async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
            async for line in response.aiter_lines():
                if '"text":"' in line and '"text":""' not in line:
                    started.set()
        ended.append(time.monotonic())

    async with trio.open_nursery() as nursery:
        for event in ready:
            nursery.start_soon(one, event)
        for event in ready:
            await event.wait()
        faulted_at.append(time.monotonic())
        await fault()
    return max(ended) - faulted_at[0], await recovered_after(client, faulted_at[0])


async def kill_decoding(cache: Path) -> dict:
    async with running_server(cache) as (_, client, admin):
        async def fault() -> None:
            os.kill(await worker_pid(admin), signal.SIGKILL)

        error, recovered = await streams_then(client, 8, fault)
    return {"error_s": error, "recovered_s": recovered}


async def kill_idle(cache: Path) -> dict:
    async with running_server(cache) as (_, client, admin):
        await client.post("/v1/completions", json=SHORT)
        os.kill(await worker_pid(admin), signal.SIGKILL)
        return {"error_s": None, "recovered_s": await recovered_after(client, time.monotonic())}


async def kill_loading(cache: Path) -> dict:
    async with running_server(cache) as (_, client, admin):
        result: dict = {}
        async with trio.open_nursery() as nursery:
            async def first() -> None:
                await client.post("/v1/completions", json=SHORT)
                result["ended"] = time.monotonic()

            nursery.start_soon(first)
            os.kill(await worker_pid(admin, "loading"), signal.SIGKILL)
            killed = time.monotonic()
        return {"error_s": result["ended"] - killed, "recovered_s": await recovered_after(client, killed)}


async def hang(cache: Path, how: str) -> dict:
    env = {"MLX_HANG_TIMEOUT": "2"}
    if how == "step":
        env["MLXTRIO_FAILPOINTS"] = "step=hang@20"
    async with running_server(cache, **env) as (_, client, admin):
        await admin.post("/admin/load", json={"model": "demo"})
        started = time.monotonic()
        if how == "sigstop":
            async def fault() -> None:
                os.kill(await worker_pid(admin), signal.SIGSTOP)

            error, recovered = await streams_then(client, 1, fault)
            return {"error_s": error, "recovered_s": recovered}
        # The failpoint fires in the worker's 20th step; every later worker hangs the same way,
        # so recovery is measured to the error only.
        response = await client.post("/v1/completions", json=LONG)
        assert response.status_code == 503, response.text
        return {"error_s": time.monotonic() - started, "recovered_s": None}


async def failpoint_request(cache: Path, setting: str, expect: int, *, recovers: bool = True) -> dict:
    async with running_server(cache, MLXTRIO_FAILPOINTS=setting) as (_, client, admin):
        await admin.post("/admin/load", json={"model": "demo"})
        started = time.monotonic()
        response = await client.post("/v1/completions", json=LONG)
        assert response.status_code == expect, response.text
        ended = time.monotonic()
        if not recovers:  # the failpoint is armed in every new worker too: no success to wait for
            return {"error_s": ended - started, "recovered_s": None}
        return {"error_s": ended - started, "recovered_s": await recovered_after(client, ended) + (ended - started)}


async def orchestrator_kill(cache: Path) -> dict:
    async with running_server(cache) as (server, client, admin):
        await client.post("/v1/completions", json=SHORT)
        pid = await worker_pid(admin)
        exited = os.pidfd_open(pid)
        try:
            server.kill()
            killed = time.monotonic()
            await trio.lowlevel.wait_readable(exited)
            return {"error_s": None, "worker_exit_s": time.monotonic() - killed}
        finally:
            os.close(exited)


async def crash_loop(cache: Path) -> dict:
    async with running_server(cache, MLXTRIO_FAILPOINTS="load=crash") as (_, client, admin):
        started = time.monotonic()
        first = await client.post("/v1/completions", json=SHORT)
        error = time.monotonic() - started
        await client.post("/v1/completions", json=SHORT)
        third = await client.post("/v1/completions", json=SHORT)
        entry = (await admin.get("/admin/status")).json()["workers"][0]
        return {
            "error_s": error,
            "first_status": first.status_code,
            "refused_with_retry_after_s": int(third.headers.get("Retry-After", "0")),
            "loads_after_three_requests": entry["loads"],
        }


FAULTS: dict[str, Callable[[Path], Awaitable[dict]]] = {
    "worker SIGKILL, idle": kill_idle,
    "worker SIGKILL, loading": kill_loading,
    "worker SIGKILL, 8 streams decoding": kill_decoding,
    "worker SIGSTOP (hang timeout 2 s)": lambda cache: hang(cache, "sigstop"),
    "step never returns (hang timeout 2 s)": lambda cache: hang(cache, "step"),
    "out of memory in a step": lambda cache: failpoint_request(cache, "step=oom@10", 507),
    "exception in every step": lambda cache: failpoint_request(cache, "step=error", 500, recovers=False),
    "corrupt frame from the worker": lambda cache: failpoint_request(cache, "send=corrupt@3", 503, recovers=False),
    "orchestrator SIGKILL": orchestrator_kill,
    "worker dies while loading, every time": crash_loop,
}


async def run(args: argparse.Namespace) -> dict:
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="mlxtrio-faults-"))
    results: dict[str, dict] = {}
    for name, fault in FAULTS.items():
        runs = []
        for _ in range(args.repeat):
            with trio.fail_after(180):  # a fault the server does not recover from is a finding, not a wait
                runs.append(await fault(cache))
        results[name] = {
            key: (round(statistics.median(run[key] for run in runs), 3) if isinstance(runs[0][key], float) else runs[0][key])
            for key in runs[0]
        }
        print(f"{name}: {results[name]}", file=sys.stderr)
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}", "repeat": args.repeat, "faults": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = trio.run(run, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
