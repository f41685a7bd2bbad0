"""Where a burst's time to first token goes, stage by stage, through the real server.

    python bench/burst_timeline.py [--model demo] [--models-dir DIR] [--burst 8] [--bursts 8] [--max-tokens 128]
        [--spy SECONDS] [--json OUT]

serve_bench.py gives time to first token at 8 streams as one number; this
says where it goes. It runs ``mlxtrio serve`` with timestamps taken at the
boundaries of its stages, then sends bursts of streaming chat completions
at once, as serve_bench's clients do, and lines the timestamps up.

The stages, each the k-th occurrence within a burst (so row 4 is "the
fourth request to get this far"), in ms after the burst began:

- ``sent``: the client starts the request (serve_bench's client, this process);
- ``read``: Hypercorn has read the request's bytes from its socket (its
  HTTP/1.1 protocol handles them);
- ``dispatched``: Quart starts handling it (``full_dispatch_request``: the
  request hooks, then the view);
- ``parsed``: the orchestrator has its body (``decode_request``);
- ``to_worker``: its ``Generate`` goes onto the ring;
- ``admitting``: the worker has its ``Generate`` and starts admitting it;
- ``admitted``: the worker has tokenized it and admitted it to the engine;
- ``made``: an engine step that gave it text has returned;
- ``from_worker``: the orchestrator has read that step's frame;
- ``first_text``: the client has the first event with text.

It also reports the worker's loop: the median time inside the engine's
``step``, and between one step's end and the next one's start (the frame
out, the request ring polled); ``--burst 1`` makes that a single stream's.

The timestamps come from wrappers around those functions, put in place by
this script's own launchers of the server and the worker (``--serve`` and
``--worker`` below): nothing in mlxtrio carries tracing code. The clock is
``time.perf_counter`` (CLOCK_MONOTONIC on Linux: one clock for all the
processes). The first burst is unmeasured (warm-up), so later ones hit the
prompt cache, as at 8 streams in serve_bench.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from profile_worker import summarise  # noqa: E402

STAGES = ("sent", "read", "dispatched", "parsed", "to_worker", "admitting", "admitted", "made", "from_worker", "first_text")


class Log:
    """One file of ``time stage request`` lines per process, under $BURST_TIMELINE_DIR."""

    def __init__(self) -> None:
        self._file = open(Path(os.environ["BURST_TIMELINE_DIR"]) / f"{os.getpid()}.txt", "a", buffering=1)  # noqa: SIM115

    def __call__(self, stage: str, request: object = "-", *, when: float | None = None) -> None:
        self._file.write(f"{time.perf_counter() if when is None else when:.6f} {stage} {request}\n")


def serve(argv: list[str]) -> int:
    """``mlxtrio serve`` with timestamps in the orchestrator, and its workers started by ``worker`` below."""
    from server_process import serve_with_worker_launcher

    from mlxtrio import _protocol as p
    from mlxtrio.api import _openai
    from mlxtrio.ipc import _trio

    log = Log()
    decode_request = _openai.decode_request
    bodies = itertools.count()  # no request id yet: each body its own number

    def traced_decode_request(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        log("parsed", next(bodies))
        return decode_request(*args, **kwargs)

    _openai.decode_request = traced_decode_request
    from hypercorn.events import RawData
    from hypercorn.protocol.h11 import H11Protocol
    from quart_trio import QuartTrio

    reads, dispatches = itertools.count(), itertools.count()
    handle, dispatch = H11Protocol.handle, QuartTrio.full_dispatch_request

    async def traced_handle(self, event):  # noqa: ANN001, ANN202
        # A request's first bytes (keep-alive connections carry one request at a time here).
        if isinstance(event, RawData) and event.data[:5] == b"POST ":
            log("read", next(reads))
        return await handle(self, event)

    async def traced_dispatch(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        log("dispatched", next(dispatches))
        return await dispatch(self, *args, **kwargs)

    H11Protocol.handle, QuartTrio.full_dispatch_request = traced_handle, traced_dispatch
    send, receive = _trio.TrioChannel.send, _trio.TrioChannel.receive

    async def traced_send(self, payload: bytes) -> None:  # noqa: ANN001
        message = p.TO_WORKER.decode(payload)
        await send(self, payload)
        if isinstance(message, p.Generate):
            log("to_worker", message.request_id)

    async def traced_receive(self) -> bytes:  # noqa: ANN001
        payload = await receive(self)
        message = p.TO_ORCHESTRATOR.decode(payload)
        if isinstance(message, p.Step):
            for delta in message.deltas:
                if delta.text:
                    log("from_worker", delta.request_id)
        return payload

    _trio.TrioChannel.send, _trio.TrioChannel.receive = traced_send, traced_receive
    return serve_with_worker_launcher(__file__, argv)


def worker(argv: list[str]) -> int:
    """mlxtrio's worker with timestamps around its engine's ``admit`` and ``step``."""
    from mlxtrio.worker import _main

    log = Log()
    load = _main._load  # noqa: SLF001

    def load_then_trace(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        # After the model loads, as the worker itself imports MLX only after its Hello.
        loaded = load(*args, **kwargs)
        from mlxtrio.worker import _engine

        for engine in (_engine.BatchEngine, _engine.SequentialEngine):
            admit, step = engine.admit, engine.step

            def traced_admit(self, request, admit=admit):  # noqa: ANN001, ANN202
                log("admitting", request.request_id)
                result = admit(self, request)
                log("admitted", request.request_id)
                return result

            def traced_step(self, step=step):  # noqa: ANN001, ANN202
                log("step")
                deltas, failures = step(self)
                log("stepped")
                for delta in deltas:
                    if delta.text:
                        log("made", delta.request_id)
                return deltas, failures

            engine.admit, engine.step = traced_admit, traced_step
        return loaded

    _main._load = load_then_trace  # noqa: SLF001
    return _main.main(argv)


def mlxtrio_share(stacks: Path) -> float:
    """Share of py-spy samples with mlxtrio's request handling, IPC or metrics anywhere on the stack.

    The rest is Hypercorn, h11, Quart and Trio: the event loop, HTTP and
    socket I/O, which run below mlxtrio's ``main`` but not under its code.
    """
    ours = total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        if any("(mlxtrio/" in frame and not any(top in frame for top in _ENTRY_POINTS) for frame in stack.split(";")):
            ours += int(count)
    return round(ours / total, 3)


_ENTRY_POINTS = ("mlxtrio/_cli.py", "mlxtrio/_server.py", "mlxtrio/__main__.py")


async def client(burst: int, bursts: int, max_tokens: int, model_path: Path, timeline: Path, spy: int) -> dict | None:
    import trio

    from serve_bench import _stream_one, prompts
    from server_process import mlxtrio_server
    from sse_client import LeanClient

    log = Log()
    texts = prompts(burst)

    async def one(http: LeanClient, url: str, index: str, text: str) -> None:
        sent = time.perf_counter()
        log("sent", index, when=sent)
        outcome = await _stream_one(http, url, str(model_path), text, max_tokens)
        log("first_text", index, when=sent + outcome.ttft)

    launcher = [sys.executable, __file__, "--serve"]
    cache = Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
    http = LeanClient()
    try:
        async with mlxtrio_server(cache, command=launcher, MLX_MODEL=str(model_path), BURST_TIMELINE_DIR=str(timeline)) as server:
            async def one_burst(number: int) -> None:
                log("burst", number)
                async with trio.open_nursery() as nursery:
                    for index, text in enumerate(texts):
                        nursery.start_soon(one, http, server.openai_url, f"{number}.{index}", text)

            for number in range(bursts + 1):  # the first is a warm-up
                await one_burst(number)
            if not spy:
                return None
            # Then py-spy on the orchestrator while bursts go on (their timestamps are not analysed).
            stacks = timeline / "orchestrator-stacks.raw"
            done = trio.Event()

            async def keep_bursting() -> None:
                while not done.is_set():
                    await one_burst(-1)  # -1: not analysed

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_bursting)
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                await trio.run_process(
                    [py_spy, "record", "-p", str(server.process.pid), "-d", str(spy), "-r", "250", "-f", "raw",
                     "-o", str(stacks), "--nonblocking"],
                    capture_stdout=True, capture_stderr=True,
                )
                done.set()
    finally:
        await http.aclose()
    return {"orchestrator_mlxtrio_share": mlxtrio_share(stacks), "orchestrator_top": summarise(stacks, top=15)["self"]}


def analyse(timeline: Path, burst: int) -> dict:
    events = []
    for path in timeline.glob("*.txt"):  # the processes' logs
        for line in path.read_text().splitlines():
            when, stage, request = line.split()
            events.append((float(when), stage, request))
    events.sort()
    marks = [index for index, event in enumerate(events) if event[1] == "burst"] + [len(events)]
    measured = [
        events[start:end] for start, end in zip(marks, marks[1:])
        if events[start][2] not in ("0", "-1")  # the warm-up, and the bursts under py-spy
    ]
    per_burst = []
    for segment in measured:
        origin = segment[0][0]
        firsts: dict[str, dict[str, float]] = {stage: {} for stage in STAGES}
        for when, stage, request in segment:
            if stage in firsts:
                firsts[stage].setdefault(request, (when - origin) * 1e3)
        per_burst.append({stage: sorted(times.values())[:burst] for stage, times in firsts.items()})
    table = {
        stage: [round(statistics.median(run[stage][k] for run in per_burst if len(run[stage]) > k), 2) for k in range(burst)]
        for stage in STAGES
    }
    # The worker's loop, over the measured bursts: inside engine.step, and between one step's end and the next's start.
    inside, between = [], []
    for segment in measured:
        began = last_end = None
        for when, stage, _ in segment:
            if stage == "step":
                if last_end is not None:
                    between.append((when - last_end) * 1e3)
                began = when
            elif stage == "stepped" and began is not None:
                inside.append((when - began) * 1e3)
                last_end, began = when, None
    return {"bursts": len(per_burst), "kth_ms_median": table, "per_burst": per_burst,
            "first_text_p50_ms_median": round(statistics.median(statistics.median(run["first_text"]) for run in per_burst), 2),
            "worker_step_ms_median": round(statistics.median(inside), 3),
            # None where a burst is one step (--max-tokens 1): nothing between steps.
            "worker_between_steps_ms_median": round(statistics.median(between), 3) if between else None,
            "worker_between_steps_ms_p90": round(statistics.quantiles(between, n=10)[-1], 3) if len(between) > 1 else None}


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve(sys.argv[2:]))
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker(sys.argv[2:]))
    import tempfile

    import trio

    from bench_models import add_model_options, build_chosen

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--burst", type=int, default=8, help="requests sent at once")
    parser.add_argument("--bursts", type=int, default=8, help="bursts measured, after one unmeasured")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--spy", type=int, default=0, metavar="SECONDS",
        help="afterwards, sample the orchestrator with py-spy this long while bursts go on (needs py-spy and ptrace)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_path = build_chosen(args)
    with tempfile.TemporaryDirectory(prefix="burst-timeline-") as directory:
        timeline = Path(directory)
        os.environ["BURST_TIMELINE_DIR"] = directory
        spied = trio.run(client, args.burst, args.bursts, args.max_tokens, model_path, timeline, args.spy)
        result = {"model": args.model, "burst": args.burst, "max_tokens": args.max_tokens, "machine_cores": os.cpu_count(),
                  "mlx_worker_cpus": os.environ.get("MLX_WORKER_CPUS", "auto"), **analyse(timeline, args.burst), **(spied or {})}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"{args.burst} requests at once, median over {result['bursts']} bursts of the k-th to reach each stage, ms:")
    print("k  " + "".join(f"{stage:>12}" for stage in STAGES))
    for k in range(args.burst):
        print(f"{k + 1:<3}" + "".join(f"{result['kth_ms_median'][stage][k]:>12.2f}" for stage in STAGES))
    print(f"time to first text, p50 of a burst (median over bursts): {result['first_text_p50_ms_median']} ms")
    print(f"worker, per step: {result['worker_step_ms_median']} ms inside engine.step, "
          f"{result['worker_between_steps_ms_median']} ms between steps (p90 {result['worker_between_steps_ms_p90']})")
    if spied:
        print(f"orchestrator's py-spy samples under mlxtrio's own code: {spied['orchestrator_mlxtrio_share']:.1%}; the top frames:")
        for frame, share in spied["orchestrator_top"]:
            print(f"  {share:6.1%}  {frame}")


if __name__ == "__main__":
    main()
