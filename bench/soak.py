"""Soak: thousands of requests, random disconnects, worker kills; then nothing may be left behind.

    python bench/soak.py [--requests 3000] [--concurrency 24] [--kills 5] [--json OUT]

Starts ``python -m mlxtrio serve`` (the demo model, loopback, free ports) and
drives it from one async client: chat and completions, streaming and not,
1 to 16 tokens each; about one request in eight hangs up early (mid-stream
or mid-wait), and the worker is SIGKILLed ``--kills`` times at even
intervals. Then it checks, and exits 1 if any check fails:

- every request ended in success, a clear error (an OpenAI-shaped error
  body, or a stream's error event) or our own hang-up: none hung past its
  deadline, none ended silently (a stream with neither [DONE] nor an error);
- the server's open file descriptors and threads are back to where they were
  after warm-up (idle threads of Trio's cache may take 10 s to go);
- no zombie children, and no shared-memory object of the server's is left;
- the server's resident memory grew by less than ``--rss-bound-mib``.

Loopback only. tests/server/test_soak.py runs it at a reduced size in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from server_process import children, mlxtrio_server  # noqa: E402

from mlxtrio.ipc import list_objects  # noqa: E402

# Per request: past this it counts as hung.
DEADLINE = 60.0


def process_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
        "rss_kib": int(fields["VmRSS"].split()[0]),
    }


class Tally:
    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.unclear: list[str] = []

    def add(self, outcome: str, detail: str = "") -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome in ("hung", "unclear", "server_error") and len(self.unclear) < 20:
            self.unclear.append(f"{outcome}: {detail[:300]}")


def _body(rng: random.Random, index: int) -> tuple[str, dict]:
    tokens = rng.randint(1, 16)
    if rng.random() < 0.5:
        return "/v1/chat/completions", {
            "model": "demo",
            "messages": [{"role": "user", "content": f"soak {index}: " + "word " * rng.randint(1, 40)}],
            "max_tokens": tokens,
        }
    return "/v1/completions", {"model": "demo", "prompt": f"soak {index} " + "x " * rng.randint(1, 40), "max_tokens": tokens}


def _clear_error(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(error.get("message")) and isinstance(error.get("type"), str)


async def _one(client: httpx.AsyncClient, rng: random.Random, index: int, tally: Tally) -> None:
    path, body = _body(rng, index)
    stream = rng.random() < 0.5
    hang_up = rng.random() < 0.125
    with trio.move_on_after(DEADLINE) as deadline:
        try:
            if not stream:
                if hang_up:
                    with trio.move_on_after(rng.uniform(0.0, 0.05)):
                        await client.post(path, json=body)
                        tally.add("ok")
                        return
                    tally.add("hung_up")
                    return
                response = await client.post(path, json=body)
                if response.status_code == 200 and response.json()["choices"]:
                    tally.add("ok")
                elif response.status_code >= 500 and response.status_code not in (503, 504, 507):
                    tally.add("server_error", response.text)
                elif _clear_error(response):
                    tally.add(f"error_{response.status_code}")
                else:
                    tally.add("unclear", f"{response.status_code} {response.text}")
                return
            async with client.stream("POST", path, json={**body, "stream": True}) as response:
                if response.status_code != 200:
                    await response.aread()
                    tally.add(f"error_{response.status_code}" if _clear_error(response) else "unclear", response.text)
                    return
                last = None
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        last = line[len("data: ") :]
                        if hang_up:
                            tally.add("hung_up")
                            return  # leaving the block closes the connection mid-stream
                if last == "[DONE]":
                    tally.add("ok")
                elif last is not None and "error" in json.loads(last):
                    tally.add("stream_error")
                else:
                    tally.add("unclear", f"stream ended after {last!r}")
        except httpx.HTTPError as exc:
            tally.add("unclear", f"{type(exc).__name__}: {exc}")
    if deadline.cancelled_caught:
        tally.add("hung", f"{path} stream={stream}")


async def _killer(admin: str, kills: int, requests: int, started: list[int], killed: list[int]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for kill in range(1, kills + 1):
            while started[0] < kill * requests // (kills + 1):
                await trio.sleep(0.05)
            pid = None
            while pid is None:
                workers = (await client.get(admin + "/admin/status")).json()["workers"]
                pid = workers[0]["pid"] if workers and workers[0]["state"] == "ready" else None
                if pid is None:
                    await trio.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)


async def soak(args: argparse.Namespace) -> dict:
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="mlxtrio-soak-"))
    async with mlxtrio_server(cache) as started_server:
        server, url, admin = started_server.process, started_server.openai_url, started_server.admin_url
        rng = random.Random(args.seed)
        tally = Tally()
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=DEADLINE + 10, limits=limits) as client:
            for index in range(20):  # warm-up: the worker loads, the caches fill
                await _one(client, random.Random(index), -index, Tally())
        baseline = process_figures(server.pid)
        started, killed = [0], []
        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_killer, admin, args.kills, args.requests, started, killed)
            async with httpx.AsyncClient(base_url=url, timeout=DEADLINE + 10, limits=limits) as client:

                async def user() -> None:
                    while started[0] < args.requests:
                        started[0] += 1
                        await _one(client, rng, started[0], tally)

                async with trio.open_nursery() as users:
                    for _ in range(args.concurrency):
                        users.start_soon(user)
        elapsed = time.monotonic() - began
        # Settle: no request in flight, then the thread cache may take its 10 s idle timeout.
        async with httpx.AsyncClient(timeout=10) as client:
            with trio.fail_after(30):
                while any(worker["active_requests"] for worker in (await client.get(admin + "/admin/status")).json()["workers"]):
                    await trio.sleep(0.1)
        after = process_figures(server.pid)
        with trio.move_on_after(15):
            while (after := process_figures(server.pid))["threads"] > baseline["threads"] or after["fds"] > baseline["fds"]:
                await trio.sleep(0.5)
        zombies = [child for child, state in children(server.pid).items() if state == "Z"]
        shm = [found.entry for found in list_objects() if found.creator_pid == server.pid]
        growth_mib = (after["rss_kib"] - baseline["rss_kib"]) / 1024
        checks = {
            "every request ended clearly": not any(k in tally.outcomes for k in ("hung", "unclear", "server_error")),
            "all requests accounted for": sum(tally.outcomes.values()) == args.requests,
            "file descriptors back to baseline": after["fds"] <= baseline["fds"],
            "threads back to baseline": after["threads"] <= baseline["threads"],
            "no zombie children": not zombies,
            "no shared memory left": not shm,
            f"memory growth under {args.rss_bound_mib} MiB": growth_mib < args.rss_bound_mib,
            "every kill landed": len(killed) == args.kills,
        }
        return {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "kills": len(killed),
            "seconds": round(elapsed, 1),
            "outcomes": dict(sorted(tally.outcomes.items())),
            "unclear": tally.unclear,
            "baseline": baseline,
            "after": after,
            "rss_growth_mib": round(growth_mib, 1),
            "zombies": zombies,
            "shared_memory_left": shm,
            "checks": checks,
            "passed": all(checks.values()),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-bound-mib", type=float, default=64.0)
    parser.add_argument("--cache-dir", help="where the demo model is built (default: a fresh temporary directory)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    report = trio.run(soak, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
