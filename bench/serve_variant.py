"""``mlxtrio serve`` with one thing changed, to measure what that thing costs.

    VARIANT_FRAME_HOLD=32 python bench/serve_variant.py --serve      # as ``python -m mlxtrio serve``
    VARIANT_WORKER_CPUS=14-15 python bench/serve_variant.py --serve

Experiments, not modes of mlxtrio; ``single_stream_pairs.py --side
NAME:VARIANT_...=...`` sets each against the server as it is and against
in-process mlx-lm. The launcher swaps the worker's command for this file's
``--worker`` (``server_process.serve_with_worker_launcher``); nothing in
mlxtrio knows.

``VARIANT_FRAME_HOLD=N``: what a frame per token costs. The worker
normally sends one frame per decode step, and each wakes the orchestrator,
which writes an SSE event and so wakes the client. Here the worker holds up
to N consecutive step frames and sends them together, so that chain runs
once per bunch, while every frame still arrives, in order. A frame goes out
at once (with the ones held before it) when it carries a request's first
token or its end, and any other message flushes the held frames first: a
client's time to first token and its last event are on time, so its decode
rate (tokens after the first over the time after the first) is measured as
usual.

``VARIANT_WORKER_CPUS=LIST``: what sharing CPUs costs. The worker runs on
those CPUs only, and the orchestrator on every allowed CPU but those (on
a GPU, mlxtrio leaves both unpinned). Run the client elsewhere too
(``taskset``) for the worker to have them to itself.

``VARIANT_SELF_TIME=PATH``: whether the worker process itself decodes more
slowly than a process of its own. Once its model is loaded, before it
serves anything, the worker runs ``stream_generate`` (mlx-lm's own loop,
no ring, no engine) on the prompts the in-process side of
``single_stream_pairs.py`` uses, and appends to PATH a JSON line per
request: its decode rate and its main thread's CPU time per token, the
figures that script reads for the in-process child.
``VARIANT_SELF_TIME_REQUESTS`` and ``VARIANT_SELF_TIME_TOKENS`` (default 8
and 128) set how many requests, after one to warm up, and how long.

``VARIANT_LOOP_TIMES=PATH``: where the worker's loop spends its time. Each
part of the loop (the engine's step, the frame sent, the doorbell rung
within it, the ring polled between steps, the parent checked, the waits
while idle) is timed, CPU and wall, and when the worker stops it appends
one JSON line of totals to PATH; ``--loop-summary PATH`` prints them per
step. Each timed call also pays for its two CPU clock reads (system calls):
a few µs that show in the small parts, not in the step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))


def _worker_cpus() -> set[int]:
    """VARIANT_WORKER_CPUS as a set (``14-15``, ``12,14``); empty when unset."""
    cpus: set[int] = set()
    for part in filter(None, os.environ.get("VARIANT_WORKER_CPUS", "").split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def serve(argv: list[str]) -> int:
    from server_process import serve_with_worker_launcher

    apart = _worker_cpus()
    if apart:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - apart)
    return serve_with_worker_launcher(__file__, argv)


def worker(argv: list[str]) -> int:
    from mlxtrio.worker import _main

    apart = _worker_cpus()
    if apart:
        # Before MLX starts its threads: they inherit it.
        os.sched_setaffinity(0, apart)
    hold = int(os.environ.get("VARIANT_FRAME_HOLD", "0"))
    if hold > 1:
        _hold_frames(_main, hold)
    if os.environ.get("VARIANT_SELF_TIME"):
        _time_itself(
            _main, Path(os.environ["VARIANT_SELF_TIME"]),
            requests=int(os.environ.get("VARIANT_SELF_TIME_REQUESTS", "8")),
            max_tokens=int(os.environ.get("VARIANT_SELF_TIME_TOKENS", "128")),
        )
    if os.environ.get("VARIANT_LOOP_TIMES"):
        _time_loop(_main, Path(os.environ["VARIANT_LOOP_TIMES"]))
    return _main.main(argv)


def _time_loop(_main, out: Path) -> None:  # noqa: ANN001
    import json
    import time

    serve = _main._serve  # noqa: SLF001

    def serve_timed(channel, engine, send, watch):  # noqa: ANN001, ANN202
        totals: dict[str, list[int]] = {}

        def timed(name, function):  # noqa: ANN001, ANN202
            def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
                try:
                    return function(*args, **kwargs)
                finally:
                    entry = totals.setdefault(name, [0, 0, 0])
                    entry[0] += time.thread_time_ns() - cpu
                    entry[1] += time.perf_counter_ns() - wall
                    entry[2] += 1

            return call

        engine.step = timed("step", engine.step)
        # Polls between steps apart from idle waits, whose wall time is the idleness.
        poll, wait = timed("poll", channel.reader.receive), timed("idle wait", channel.reader.receive)
        channel.reader.receive = lambda *, timeout=None, **kwargs: (poll if timeout == 0 else wait)(timeout=timeout, **kwargs)
        writer = channel.writer
        writer._ring_doorbell = timed("doorbell", writer._ring_doorbell)  # noqa: SLF001
        try:
            return serve(channel, engine, timed("send", send), timed("watch", watch))
        finally:
            with out.open("a") as lines:
                variant = {key: value for key, value in os.environ.items() if key.startswith("VARIANT_")}
                parts = {name: dict(zip(("cpu_ns", "wall_ns", "calls"), entry)) for name, entry in totals.items()}
                lines.write(json.dumps({"variant": variant, "parts": parts}) + "\n")

    _main._serve = serve_timed  # noqa: SLF001


def _time_itself(_main, out: Path, *, requests: int = 8, max_tokens: int = 128) -> None:  # noqa: ANN001
    import json
    import time

    from serve_bench import prompts, timed_stream_generate

    load = _main._load  # noqa: SLF001

    def load_then_time(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loaded = load(*args, **kwargs)
        model, tokenizer = loaded[0], loaded[1]
        texts = prompts(8)
        with out.open("a") as lines:
            for index in range(requests + 1):  # the first warms up
                prompt = tokenizer.apply_chat_template(
                    [{"role": "user", "content": texts[index % len(texts)]}], add_generation_prompt=True
                )
                before = time.thread_time()
                ttft, rate, tokens = timed_stream_generate(model, tokenizer, prompt, max_tokens)
                cpu = time.thread_time() - before
                if index:
                    lines.write(json.dumps({"tps": rate, "ttft": ttft, "tokens": tokens, "cpu_us_per_token": cpu / tokens * 1e6}) + "\n")
        return loaded

    _main._load = load_then_time  # noqa: SLF001


def _hold_frames(_main, hold: int) -> None:  # noqa: ANN001
    from mlxtrio import _protocol as p

    serve = _main._serve  # noqa: SLF001

    def serve_holding(channel, engine, send, watch):  # noqa: ANN001, ANN202
        held: list[p.ToOrchestrator] = []

        def send_held(message: p.ToOrchestrator) -> None:
            held.append(message)
            urgent = not isinstance(message, p.Step) or any(
                delta.finish_reason is not None or delta.completion_tokens <= 1 for delta in message.deltas
            )
            if urgent or len(held) >= hold:
                for one in held:
                    send(one)
                held.clear()

        return serve(channel, engine, send_held, watch)

    _main._serve = serve_holding  # noqa: SLF001


def loop_summary(path: Path) -> list[dict]:
    """VARIANT_LOOP_TIMES' lines as microseconds of CPU and wall time per step, part by part."""
    import json

    summaries = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        steps = record["parts"].get("step", {}).get("calls", 0)
        if not steps:
            continue  # a worker that never stepped: nothing to divide by
        summaries.append({
            "variant": {key: value for key, value in record["variant"].items() if key != "VARIANT_LOOP_TIMES"},
            "steps": steps,
            "us_per_step": {
                name: {"cpu": round(part["cpu_ns"] / steps / 1e3, 1), "wall": round(part["wall_ns"] / steps / 1e3, 1)}
                for name, part in record["parts"].items()
            },
        })
    return summaries


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loop-summary"]:
        import json

        for path in sys.argv[2:]:
            print(json.dumps(loop_summary(Path(path)), indent=1))
        sys.exit(0)
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve(sys.argv[2:]))
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} --serve [mlxtrio serve options] | --loop-summary PATH...")
