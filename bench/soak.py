"""Soak: thousands of requests, random disconnects, worker kills; then nothing may be left behind.

    python -m bench.soak [--requests 3000] [--concurrency 24] [--kills 5] [--json OUT]

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

``--hostile`` runs the hostile mix instead (issue 22; what it sends:
``bench.hostile_mix``): while ``--streams`` well-behaved clients stream
without pause and time every silence, ``--rounds`` seeded rounds of schema
bombs, half-sent bodies, foreign-origin and foreign-Host requests, overflow
numbers and control-token injection, with the server's body timeout cut to
``--body-timeout``. Then it checks, and exits 1 if any check fails: the
server is the same live process and its worker the same (the model stayed
loaded); every hostile request got the answer it must (its 4xx; a schema
within the limits: served or a 400 naming a limit), none a 5xx and none a
dropped connection; control tokens counted as text; no well-behaved stream
was silent for ``--stall`` seconds (1) or ended without [DONE]; the
orchestrator's and the worker's resident memory came back to within
``--rss-margin-mib`` of their level before the mix, and the orchestrator's
file descriptors to theirs; no zombie and no shared-memory object left; no
error in the server's log. The warm-up before that level is taken fills the
bounded caches (the prompt cache, cut to ``--prompt-cache-mib``, and the
compiled grammars), so that what grows past it is not a cache filling.

Loopback only. tests/e2e/test_soak.py runs the first (not ``--hostile``) at a reduced size in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from mlxtrio.ipc import list_objects

from ._common import write_json
from .hostile_mix import Probe, distinct_schemas, half_sent, round_probes
from .server_process import children, mlxtrio_server

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


# The hostile mix (--hostile): a few clients that behave, and rounds of requests that do not.

# What a well-behaved client streams, again and again.
STREAM = {
    "model": "demo",
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": 64,
    "ignore_eos": True,
    "stream": True,
}
# A schema within the limits is served, or refused by a limit that is itself a few seconds at most.
ANSWERED_WITHIN = 15.0


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


class Streams:
    """The well-behaved streams' silences: between two chunks, and before the first."""

    def __init__(self) -> None:
        self.requests = 0
        self.done = 0
        self.problems: list[str] = []
        self.longest_gap = (0.0, 0.0)  # (seconds, when it ended)
        self.longest_first = (0.0, 0.0)
        self.silences_over_half_second = 0

    def silence(self, seconds: float, ended: float, *, first: bool) -> None:
        self.silences_over_half_second += seconds > 0.5
        if first and seconds > self.longest_first[0]:
            self.longest_first = (seconds, ended)
        elif not first and seconds > self.longest_gap[0]:
            self.longest_gap = (seconds, ended)


async def _well_behaved(client: httpx.AsyncClient, stop: trio.Event, streams: Streams) -> None:
    while not stop.is_set():
        streams.requests += 1
        last, sent, payload = None, time.monotonic(), ""
        try:
            async with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
                if response.status_code != 200:
                    await response.aread()
                    streams.problems.append(f"status {response.status_code}: {response.text[:200]}")
                    continue
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    now = time.monotonic()
                    streams.silence(now - (last or sent), now, first=last is None)
                    last, payload = now, line[len("data: ") :]
            if last is not None and payload == "[DONE]":
                streams.done += 1
            else:
                streams.problems.append(f"ended without [DONE], after {payload!r:.200}")
        except httpx.HTTPError as exc:
            streams.problems.append(f"{type(exc).__name__}: {exc}")
            await trio.sleep(0.1)  # a server gone refuses at once: no busy loop


def _judge(probe: Probe, response: httpx.Response, seconds: float) -> str:
    """'' when the answer is the one a server that keeps its promise gives; else what is wrong."""
    if response.status_code >= 500:
        return "a 5xx"
    if response.status_code != 200:
        if not _clear_error(response):
            return "not an OpenAI-shaped error"
        error = response.json()["error"]
        for field in ("code", "param"):
            if getattr(probe, field) is not None and error.get(field) != getattr(probe, field):
                return f"{field} {error.get(field)!r}, not {getattr(probe, field)!r}"
    if probe.status is not None:
        return "" if response.status_code == probe.status else f"not a {probe.status}"
    if response.status_code not in (200, 400):
        return "neither served nor refused by a limit"
    return f"answered after {seconds:.1f} s" if seconds > ANSWERED_WITHIN else ""


async def _probe(clients: dict[str, httpx.AsyncClient], probe: Probe, results: list[dict]) -> None:
    began = time.monotonic()
    result: dict = {"kind": probe.kind, "began": began}
    try:
        response = await clients[probe.port].request(probe.method, probe.path, headers=list(probe.headers), content=probe.body)
    except httpx.HTTPError as exc:
        result.update(ended=time.monotonic(), status=None, wrong=f"connection dropped: {type(exc).__name__}: {exc}")
    else:
        result.update(ended=time.monotonic(), status=response.status_code)
        if response.status_code != 200 and _clear_error(response):
            result["code"] = response.json()["error"].get("code")
        result["wrong"] = _judge(probe, response, result["ended"] - began)
        if result["wrong"]:
            result["wrong"] += f": {response.status_code} {response.text[:200]}"
        if probe.pair is not None and response.status_code == 200:
            result["pair"] = (probe.pair, probe.kind, response.json()["usage"]["prompt_tokens"])
    results.append(result)


async def _round(clients: dict[str, httpx.AsyncClient], probes: list[Probe], half: int, args: argparse.Namespace,
                 rng: random.Random, results: list[dict], half_tally: dict[str, int]) -> None:
    addresses = {port: str(clients[port].base_url).removeprefix("http://").rstrip("/").rsplit(":", 1) for port in clients}
    async with trio.open_nursery() as nursery:
        for probe in probes:
            nursery.start_soon(_probe, clients, probe, results)
        for index in range(half):
            # Closed at once, at a random moment while the server waits, about when its 408 goes out
            # (its answer racing the client's close), or once it answered; one in five on the admin port.
            draw = rng.random()
            close_after = (
                None if draw < 0.3
                else rng.uniform(0.0, args.body_timeout) if draw < 0.5
                else args.body_timeout + rng.uniform(-0.02, 0.02) if draw < 0.9
                else args.body_timeout + 1.0
            )
            port = "admin" if index % 5 == 0 else "openai"
            host, number = addresses[port]
            path = "/admin/load" if port == "admin" else "/v1/chat/completions"
            nursery.start_soon(functools.partial(half_sent, host, int(number), path, close_after=close_after, tally=half_tally))


async def _worker(admin: httpx.AsyncClient) -> dict:
    workers = (await admin.get("/admin/status")).json()["workers"]
    return workers[0] if workers else {}


async def _health(admin: httpx.AsyncClient) -> dict:
    """The worker's own figures: its prompt cache's bytes, MLX's active memory."""
    workers = (await admin.get("/admin/health")).json()["workers"]
    return workers[0] if workers else {}


async def _idle(admin: httpx.AsyncClient) -> None:
    with trio.fail_after(60):
        while (await _worker(admin)).get("active_requests"):
            await trio.sleep(0.1)


async def _sample_memory(pids: dict[str, int], peaks: dict[str, int], stop: trio.Event) -> None:
    while not stop.is_set():
        for name, pid in pids.items():
            with contextlib.suppress(OSError, KeyError):
                peaks[name] = max(peaks.get(name, 0), process_figures(pid)["rss_kib"])
        with trio.move_on_after(0.2):
            await stop.wait()


_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ")
_EXCEPTION = re.compile(r"^[\s|+]*((?:[A-Za-z_][\w.]*)(?:Error|Exception|Group|Exit|Interrupt)\b.*)")


def _log_errors(log: Path) -> dict:
    """The server log's errors: how many, the exceptions their tracebacks end in, and the first one whole."""
    blocks: list[list[str]] = []
    current: list[str] | None = None  # the error record being read, with its traceback's lines
    for line in log.read_text(errors="replace").splitlines():
        level = _LOG_LINE.match(line)
        if level is not None:
            current = [line] if level.group(1) in ("ERROR", "CRITICAL") else None
            if current is not None:
                blocks.append(current)
        elif current is not None:
            current.append(line)
    exceptions: dict[str, int] = {}
    for block in blocks:
        for line in block[1:]:
            if (found := _EXCEPTION.match(line)) is not None and "Traceback" not in line:
                exceptions[found.group(1)[:200]] = exceptions.get(found.group(1)[:200], 0) + 1
    return {"errors": len(blocks), "exceptions": exceptions, "first": blocks[0][:60] if blocks else []}


def _rss_mib(pids: dict[str, int]) -> dict[str, float]:
    return {name: _mib(process_figures(pid)["rss_kib"]) for name, pid in pids.items() if Path(f"/proc/{pid}").exists()}


async def _warm_up(clients: dict[str, httpx.AsyncClient], streaming: httpx.AsyncClient, args: argparse.Namespace, rng: random.Random) -> None:
    """The model loads, every kind of request goes through, and the bounded caches fill (the prompt
    cache, the compiled grammars): the level to come back to is the one they keep, growth past it a leak."""
    urls = {port: str(client.base_url).rstrip("/") for port, client in clients.items()}
    admin = clients["admin"]
    await admin.post("/admin/load", json={"model": "demo"})
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(args.streams):
            nursery.start_soon(_well_behaved, streaming, stop, Streams())
        for index in (-2, -1):
            await _round(clients, round_probes(args.seed, index, openai_url=urls["openai"], admin_url=urls["admin"]), 10, args, rng, [], {})
        # No public setting says how many compiled grammars a worker keeps: the worker's own constant.
        from mlxtrio.worker._grammar import _CACHE_SIZE as grammars_kept

        for probe in distinct_schemas(args.seed, grammars_kept + 4):
            await _probe(clients, probe, [])
        with trio.move_on_after(30):
            while (await _health(admin)).get("prompt_cache_bytes", 0) < 0.9 * args.prompt_cache_mib * 2**20:
                await trio.sleep(0.5)
        stop.set()
    await admin.post("/admin/load", json={"model": "demo"})  # in case a foreign unload got through
    await _idle(admin)


async def _settle(pids: dict[str, int], baseline: dict[str, dict], args: argparse.Namespace) -> dict[str, dict]:
    """The processes' figures once memory and descriptors are back to their level, or after ``--settle`` seconds."""
    deadline = time.monotonic() + args.settle
    while True:
        after = {name: process_figures(pid) for name, pid in pids.items() if Path(f"/proc/{pid}").exists()}
        settled = (
            len(after) == len(pids)
            and all(after[name]["rss_kib"] - baseline[name]["rss_kib"] < args.rss_margin_mib * 1024 for name in pids)
            and after["orchestrator"]["fds"] <= baseline["orchestrator"]["fds"]
        )
        if settled or time.monotonic() > deadline:
            return after
        await trio.sleep(0.5)


def _tally_probes(results: list[dict], stall: float, streams: Streams) -> dict:
    """The hostile requests' answers by kind, what was wrong, the control-token pairs, and what was in
    flight while the streams were silent longest (when that was long enough to matter)."""
    by_kind: dict[str, dict[str, int]] = {}
    pairs: dict[str, dict[str, int]] = {}
    for result in results:
        counts = by_kind.setdefault(result["kind"], {})
        key = "dropped" if result["status"] is None else " ".join(filter(None, (str(result["status"]), result.get("code"))))
        counts[key] = counts.get(key, 0) + 1
        if "pair" in result:
            pair, kind, tokens = result["pair"]
            pairs.setdefault(pair, {})[kind] = tokens
    gap, ended = max(streams.longest_gap, streams.longest_first)
    return {
        "by_kind": dict(sorted(by_kind.items())),
        "wrong": [f"{result['kind']}: {result['wrong']}" for result in results if result["wrong"]],
        "pairs": pairs,
        "uneven": {pair: tokens for pair, tokens in pairs.items() if len(set(tokens.values())) != 1},
        "longest_silence": gap,
        "in_flight": sorted({result["kind"] for result in results if result["began"] < ended and result["ended"] > ended - gap})
        if gap >= stall / 2
        else [],
    }


async def hostile(args: argparse.Namespace) -> dict:
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="mlxtrio-soak-"))
    started = time.monotonic()
    settings = {"MLX_BODY_TIMEOUT": str(args.body_timeout), "MLX_PROMPT_CACHE_BYTES": str(int(args.prompt_cache_mib * 2**20))}
    async with mlxtrio_server(cache, **settings) as started_server:
        server = started_server.process
        urls = {"openai": started_server.openai_url, "admin": started_server.admin_url}
        async with contextlib.AsyncExitStack() as stack:
            clients = {port: await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60)) for port, url in urls.items()}
            streaming = await stack.enter_async_context(httpx.AsyncClient(base_url=urls["openai"], timeout=60))
            admin = clients["admin"]
            rng = random.Random(args.seed)
            rounds = [round_probes(args.seed, index, openai_url=urls["openai"], admin_url=urls["admin"]) for index in range(args.rounds)]
            await _warm_up(clients, streaming, args, rng)
            worker_before = await _worker(admin)
            pids = {"orchestrator": server.pid, "worker": worker_before["pid"]}
            baseline = {name: process_figures(pid) for name, pid in pids.items()}
            health_before = await _health(admin)
            # The mix.
            streams, results, half_tally, peaks, by_round = Streams(), [], {}, {}, []
            stop = trio.Event()
            began = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sample_memory, pids, peaks, stop)
                for _ in range(args.streams):
                    nursery.start_soon(_well_behaved, streaming, stop, streams)
                await trio.sleep(0.5)  # the streams are going before the first round
                for index, probes in enumerate(rounds):
                    share = args.half_sent * (index + 1) // args.rounds - args.half_sent * index // args.rounds
                    await _round(clients, probes, share, args, rng, results, half_tally)
                    by_round.append(_rss_mib(pids))
                stop.set()
            elapsed = time.monotonic() - began
            alive = server.poll() is None
            worker_after, health_after = {}, {}
            if alive:
                worker_after = await _worker(admin)
                await _idle(admin)
            after = await _settle(pids, baseline, args)
            if alive:
                health_after = await _health(admin)
            zombies = [child for child, state in children(server.pid).items() if state == "Z"]
            shm_running = [found.entry for found in list_objects() if found.creator_pid in pids.values()]
            log = _log_errors(started_server.log_path)
    shm_after_exit = [found.entry for found in list_objects() if found.creator_pid in pids.values()]
    tally = _tally_probes(results, args.stall, streams)
    growth = {name: (after[name]["rss_kib"] - baseline[name]["rss_kib"]) / 1024 if name in after else float("inf") for name in pids}
    checks = {
        "the server is the same live process": alive,
        "the same worker, the model still loaded": worker_after.get("pid") == worker_before["pid"] and worker_after.get("state") == "ready",
        "no hostile request got a 5xx": not any((result["status"] or 0) >= 500 for result in results),
        "no hostile request's connection was dropped": not any(result["status"] is None for result in results),
        "every hostile request got the answer it must": not tally["wrong"],
        "control tokens counted as text": len(tally["pairs"]) == args.rounds and not tally["uneven"],
        f"no well-behaved stream silent for {args.stall} s": tally["longest_silence"] < args.stall,
        "every well-behaved stream ended with [DONE]": not streams.problems and streams.done > 0,
        f"orchestrator memory back within {args.rss_margin_mib} MiB": growth["orchestrator"] < args.rss_margin_mib,
        f"worker memory back within {args.rss_margin_mib} MiB": growth["worker"] < args.rss_margin_mib,
        "orchestrator file descriptors back to their level": after.get("orchestrator", {}).get("fds", 1 << 30) <= baseline["orchestrator"]["fds"],
        "no zombie children": not zombies,
        "no shared memory left": not shm_running and not shm_after_exit,
        # A client can do these at will: a traceback each would be its to write in the log.
        "no error in the server's log": not log["errors"],
    }
    return {
        "mode": "hostile",
        "rounds": args.rounds,
        "seed": args.seed,
        "body_timeout_s": args.body_timeout,
        "seconds": round(elapsed, 1),
        "seconds_in_all": round(time.monotonic() - started, 1),
        "hostile_requests": len(results),
        "answers_by_kind": tally["by_kind"],
        "wrong": tally["wrong"][:40],
        "wrong_total": len(tally["wrong"]),
        "control_token_pairs_uneven": tally["uneven"],
        "half_sent": dict(sorted(half_tally.items())),
        "streams": {
            "count": args.streams,
            "requests": streams.requests,
            "completed": streams.done,
            "longest_gap_s": round(streams.longest_gap[0], 3),
            "longest_first_chunk_s": round(streams.longest_first[0], 3),
            "silences_over_half_a_second": streams.silences_over_half_second,
            "hostile_kinds_in_flight_at_the_longest": tally["in_flight"],
            "problems": streams.problems[:20],
        },
        "memory_mib": {
            name: {"before": _mib(baseline[name]["rss_kib"]), "peak": _mib(peaks.get(name, 0)),
                   "after": _mib(after[name]["rss_kib"]) if name in after else None}
            for name in pids
        },
        "memory_mib_after_each_round": by_round,
        "worker_caches_mib": {
            when: {key: _mib(health.get(key, 0) // 1024) for key in ("prompt_cache_bytes", "active_memory_bytes")}
            for when, health in (("before", health_before), ("after", health_after))
        },
        "orchestrator_fds": {"before": baseline["orchestrator"]["fds"], "after": after.get("orchestrator", {}).get("fds")},
        "worker_pid": {"before": worker_before["pid"], "after": worker_after.get("pid")},
        "zombies": zombies,
        "shared_memory_left": shm_running + shm_after_exit,
        "server_log": log,
        "server_exit_code": server.returncode,
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
    hostile_options = parser.add_argument_group("the hostile mix")
    hostile_options.add_argument("--hostile", action="store_true", help="run the hostile mix (bench.hostile_mix) instead")
    hostile_options.add_argument("--rounds", type=int, default=8)
    hostile_options.add_argument("--half-sent", type=int, default=300, help="half-sent bodies in all, spread over the rounds")
    hostile_options.add_argument("--streams", type=int, default=3, help="well-behaved clients streaming throughout")
    hostile_options.add_argument("--body-timeout", type=float, default=2.0, help="the server's MLX_BODY_TIMEOUT for the run")
    hostile_options.add_argument("--stall", type=float, default=1.0, help="a well-behaved stream silent this long fails the run")
    hostile_options.add_argument("--rss-margin-mib", type=float, default=32.0)
    hostile_options.add_argument("--prompt-cache-mib", type=float, default=8.0,
                                 help="the server's MLX_PROMPT_CACHE_BYTES for the run: small, so that the warm-up fills it")
    hostile_options.add_argument("--settle", type=float, default=20.0, help="seconds allowed for memory and descriptors to come back")
    args = parser.parse_args()
    report = trio.run(hostile if args.hostile else soak, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        write_json(args.json, report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
