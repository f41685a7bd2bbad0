"""What streaming each decode step to another process costs the decoder, in-process otherwise.

    python bench/wakeup_cost.py [--model demo] [--models-dir DIR] [--tokens 256] [--repeats 4] [--json OUT]

The serving worker sends one frame per decode step through a ring and rings
the orchestrator's doorbell, which wakes a process that sleeps between
tokens. This probe decodes one request with mlxtrio's engine (a request
alone, as the worker serves it) three ways, taking turns:

- ``plain``: no frames;
- ``to_a_sleeper``: each step's frame sent to a second process that waits on
  the doorbell between frames, as the orchestrator's Trio loop does;
- ``to_a_poller``: the same to a process that never sleeps (it polls the
  ring), so no frame has to wake anyone.

On Linux the decoder is pinned to the last allowed CPU and the reader to the
first, as with ``MLX_WORKER_CPUS=auto`` (the orchestrator is not pinned, but
the decoder's CPU is busy). The difference between the first two ways is
what the process boundary costs a token beyond the send itself.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import time
from pathlib import Path

from bench_models import add_model_options, build_chosen  # no MLX at import: the readers fork after

from mlxtrio.tuning import allowed_cpus, pin_this_process
from mlxtrio.ipc._channel import Channel


def reader(channel: Channel, *, sleeps: bool) -> None:
    """The orchestrator's part, reduced to draining: until the doorbell's write end closes."""
    while True:
        if sleeps:
            select.select([channel.doorbell_fd], [], [])
        try:
            if os.read(channel.doorbell_fd, 65536) == b"":
                return
        except BlockingIOError:
            pass
        while channel.reader.receive(timeout=0) is not None:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cpus = allowed_cpus()

    # The readers fork before MLX starts any thread.
    channels = {}
    for name in ("to_a_sleeper", "to_a_poller"):
        orchestrator_end = Channel.create()
        channels[name] = (orchestrator_end, Channel.attach(orchestrator_end.spec, doorbell_fd=orchestrator_end.pass_fds[0]))
    readers = {}
    for name, (orchestrator_end, worker_end) in channels.items():
        pid = os.fork()
        if pid == 0:
            if cpus:
                pin_this_process((cpus[0],))
            for other, _ in channels.values():
                other.close_worker_fds()  # only the decoder may hold a doorbell's write end
            reader(orchestrator_end, sleeps=name == "to_a_sleeper")
            os._exit(0)
        readers[name] = (pid, orchestrator_end, worker_end)

    from bench_models import load_as_worker
    from serve_bench import prompts

    from mlxtrio import _protocol as p
    from mlxtrio.worker._engine import BatchEngine

    if cpus:
        pin_this_process((cpus[-1],))
    model_path = build_chosen(args)
    model, tokenizer = load_as_worker(model_path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompts(1)[0]}], add_generation_prompt=True, tokenize=False)
    params = p.SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    encode = p.TO_ORCHESTRATOR.encode
    request_ids = iter(range(1, 1 << 30))

    def decode(way: str) -> float:
        send = readers[way][2].writer.send if way in readers else None
        engine = BatchEngine(model, tokenizer, context_length=32768, prompt_cache_bytes=0)
        engine.admit(p.Generate(next(request_ids), params, None, text))
        first = None
        count = 0
        while engine.active:
            deltas, failures = engine.step()
            assert not failures, failures
            if send is not None:
                send(encode(p.Step(tuple(deltas))))
            for delta in deltas:
                if first is None and delta.completion_tokens:
                    first = time.perf_counter()
                count = delta.completion_tokens
        return (count - 1) / (time.perf_counter() - first)

    ways = ("plain", "to_a_sleeper", "to_a_poller")
    for way in ways:
        decode(way)
    samples: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.repeats):
        for way in ways:
            samples[way].append(decode(way))
    for pid, orchestrator_end, worker_end in readers.values():
        orchestrator_end.close_worker_fds()  # EOF on the doorbell: the reader returns
        os.waitpid(pid, 0)
        worker_end.close()
        orchestrator_end.unlink()
        orchestrator_end.close()
    result = {
        "model": args.model,
        "tokens": args.tokens,
        "cpus": {"decoder": cpus[-1:], "reader": cpus[:1]},
        "tok_per_s_median": {way: statistics.median(values) for way, values in samples.items()},
        "tok_per_s_samples": samples,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
