"""IPC benchmark: frames/s one way and round-trip latency between two processes.

The orchestrator side is the real Trio side (mlxtrio.ipc.TrioChannel: fast
path in the Trio thread, blocking waits in IPC threads); the other process is
plain synchronous Python like the worker. For scale it also measures a bare
posix_ipc semaphore ping-pong between two processes, the floor under any
semaphore-signalled IPC.

    python -m bench.ipc_bench [--frames N] [--round-trips N] [--json]

Results and the machine they came from go in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import time

import trio

from mlxtrio.ipc import NAME_PREFIX, Channel, ChannelSpec, TrioChannel, parent_watch

from ._common import ROOT, checkout_environment

# This harness in a child process, with this checkout's mlxtrio.
_CHILD = [sys.executable, "-m", "bench.ipc_bench"]

SIZES = (64, 64 * 1024)


# --- the other process ------------------------------------------------------

def child(mode: str, spec_json: str, count: int, size: int) -> None:
    channel = Channel.attach(ChannelSpec.from_json(spec_json))
    watch = parent_watch()
    send, receive = channel.writer.send, channel.reader.receive
    send(b"attached")
    if mode == "source":  # one way, child -> Trio (the token direction)
        receive(interrupt=watch)  # b"go"
        payload = bytes(size)
        for _ in range(count):
            send(payload, interrupt=watch)
        receive(interrupt=watch)
    elif mode == "sink":  # one way, Trio -> child (the request direction)
        for _ in range(count):
            receive(interrupt=watch)
        send(b"done")
        receive(interrupt=watch)
    elif mode == "echo":
        while True:
            send(receive(interrupt=watch), interrupt=watch)


def raw_semaphore_child(ping_name: str, pong_name: str, count: int) -> None:
    import posix_ipc

    ping, pong = posix_ipc.Semaphore(ping_name), posix_ipc.Semaphore(pong_name)
    for _ in range(count):
        ping.acquire()
        pong.release()


# --- the Trio side ----------------------------------------------------------

async def _with_child(mode: str, count: int, size: int, body):  # noqa: ANN001, ANN202
    channel = Channel.create(capacity=4 * 1024 * 1024)
    trio_channel = TrioChannel(channel, send_timeout=30)
    process = await trio.lowlevel.open_process(
        [*_CHILD, "--child", mode, channel.spec.to_json(), str(count), str(size)],
        pass_fds=channel.pass_fds, cwd=ROOT, env=checkout_environment(),
    )
    channel.close_worker_fds()
    try:
        assert await trio_channel.receive() == b"attached"
        channel.unlink()
        return await body(trio_channel)
    finally:
        process.kill()
        await process.wait()
        await trio_channel.aclose()


async def one_way_to_trio(count: int, size: int) -> float:
    async def body(channel: TrioChannel) -> float:
        await channel.send(b"go")
        start = time.perf_counter()
        for _ in range(count):
            await channel.receive()
        return count / (time.perf_counter() - start)

    return await _with_child("source", count, size, body)


async def one_way_from_trio(count: int, size: int) -> float:
    async def body(channel: TrioChannel) -> float:
        payload = bytes(size)
        start = time.perf_counter()
        for _ in range(count):
            await channel.send(payload)
        assert await channel.receive() == b"done"
        return count / (time.perf_counter() - start)

    return await _with_child("sink", count, size, body)


async def round_trips(count: int, size: int) -> list[float]:
    async def body(channel: TrioChannel) -> list[float]:
        payload = bytes(size)
        for _ in range(min(200, count)):  # warm the thread cache and the pages
            await channel.send(payload)
            await channel.receive()
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            await channel.send(payload)
            await channel.receive()
            samples.append(time.perf_counter() - start)
        return samples

    return await _with_child("echo", count, size, body)


def raw_semaphore_round_trips(count: int) -> list[float]:
    import posix_ipc

    # mlxtrio's own naming (prefix and creator's pid), so that a server's sweep of stale objects finds any left.
    base = f"/{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    ping = posix_ipc.Semaphore(base + "p", posix_ipc.O_CREX, mode=0o600)
    pong = posix_ipc.Semaphore(base + "o", posix_ipc.O_CREX, mode=0o600)
    try:
        process = subprocess.Popen([*_CHILD, "--raw-child", ping.name, pong.name, str(count + 200)], cwd=ROOT, env=checkout_environment())
        samples = []
        for index in range(count + 200):
            start = time.perf_counter()
            ping.release()
            pong.acquire()
            if index >= 200:
                samples.append(time.perf_counter() - start)
        process.wait()
        return samples
    finally:
        for sem in (ping, pong):
            sem.unlink()
            sem.close()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_all(frames: int, trips: int) -> dict:
    results: dict = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "one_way_frames_per_s": {},
        "round_trip_us": {},
    }
    for size in SIZES:
        count = frames if size <= 1024 else max(1000, frames // 20)
        results["one_way_frames_per_s"][f"{size} B worker->trio"] = round(await one_way_to_trio(count, size))
        results["one_way_frames_per_s"][f"{size} B trio->worker"] = round(await one_way_from_trio(count, size))
    for size in SIZES:
        samples = await round_trips(trips, size)
        results["round_trip_us"][f"{size} B"] = {
            "p50": round(percentile(samples, 0.50) * 1e6, 1),
            "p99": round(percentile(samples, 0.99) * 1e6, 1),
        }
    raw = raw_semaphore_round_trips(trips)
    results["round_trip_us"]["raw posix_ipc semaphores"] = {
        "p50": round(percentile(raw, 0.50) * 1e6, 1),
        "p99": round(percentile(raw, 0.99) * 1e6, 1),
    }
    return results


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    if sys.argv[1:2] == ["--raw-child"]:
        raw_semaphore_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000, help="64-byte frames per one-way run")
    parser.add_argument("--round-trips", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = trio.run(run_all, args.frames, args.round_trips)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(results["machine"])
    for name, value in results["one_way_frames_per_s"].items():
        print(f"one way {name:>24}: {value:>10,} frames/s")
    for name, value in results["round_trip_us"].items():
        print(f"round trip {name:>24}: p50 {value['p50']:>7} us   p99 {value['p99']:>7} us")


if __name__ == "__main__":
    main()
