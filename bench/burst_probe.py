"""A burst of requests through mlxtrio's engine in-process: time to each first token, step by step.

    python bench/burst_probe.py --model demo [--models-dir DIR] [--burst 8] [--repeats 3] [--chat] [--json OUT]

bench/serve_bench.py's time to first token at 8 streams is what a burst of 8
requests meets through the whole server. This probe replays such a burst on
the worker's engine alone (``BatchEngine``, driven step by step as the worker
drives it, finished sequences' caches computed after each step by
``settle``), so the engine's share can be told from the rest. (Before the
eighth session it did not call ``settle``, so a cached burst's first step
also computed the previous burst's caches: about 0.7 ms more on the 2-core
VM with the demo model, bench/first_step_probe.py.) Each burst is of
serve_bench's prompts (rendered with the chat template here; with ``--chat``,
chat messages that the engine renders, as the server's chat requests are), in
two arrival patterns:

- ``together``: all admitted before the first step;
- ``staggered``: one admitted, one step, then the rest (what a server sees
  when the first request of a burst arrives a moment before the others: it
  starts alone, and the others move it into the batch);

and two cache states: ``cold`` (prompts the engine has not seen) and
``cached`` (the same prompts again, as at 8 streams in serve_bench after its
warm-up pass). It reports, per burst, the milliseconds to each request's
first token (a delta that carries text), the duration of the first steps and
of the admissions before the first; and, over the repeats, the median of
each pattern's p50, of its first step and of those admissions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_models import add_model_options, build_chosen, load_as_worker
from serve_bench import prompts

from mlxtrio import _protocol as p
from mlxtrio.worker._engine import BatchEngine


def burst(engine: BatchEngine, texts: list, first_id: int, *, staggered: bool, max_tokens: int) -> dict:
    """``texts``: prompts (str), or chat messages (tuples) as the server passes them on."""
    params = p.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    requests = [
        p.Generate(first_id + index, params, text, None) if isinstance(text, tuple) else p.Generate(first_id + index, params, None, text)
        for index, text in enumerate(texts)
    ]
    started = time.perf_counter()
    first: dict[int, float] = {}
    steps: list[float] = []
    for request in requests[:1] if staggered else requests:
        engine.admit(request)
    admitted = time.perf_counter() - started
    while engine.active:
        if staggered and len(steps) == 1:
            for request in requests[1:]:
                engine.admit(request)
        tick = time.perf_counter()
        deltas, failures = engine.step()
        steps.append(time.perf_counter() - tick)
        # As the worker does after each step's frame: finished sequences' caches computed now, not in the next burst's first step.
        engine.settle()
        assert not failures, failures
        for delta in deltas:
            if delta.text:
                first.setdefault(delta.request_id, time.perf_counter() - started)
    ttfts = sorted(first.values())
    return {
        "ttft_ms": [round(value * 1e3, 1) for value in ttfts],
        "ttft_p50_ms": round(statistics.median(ttfts) * 1e3, 1),
        "first_steps_ms": [round(value * 1e3, 1) for value in steps[:8]],
        # Admitting what came before the first step, back to back as the worker does.
        "admit_ms": round(admitted * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--chat", action="store_true", help="chat requests, the template rendered by the engine, not prompts rendered here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_path = build_chosen(args)
    model, tokenizer = load_as_worker(model_path)
    engine = BatchEngine(model, tokenizer, context_length=32768)

    def chat(text: str) -> str | tuple:
        if args.chat:
            # The worker renders the template itself, as for a chat request through the server.
            return (p.ChatMessage("user", text),)
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)

    # Prompts of serve_bench's shape, a fresh set for every cold burst.
    pool = [chat(text) for text in prompts(args.burst * (2 * args.repeats + 1))]
    next_id = 1
    burst(engine, pool[: args.burst], next_id, staggered=False, max_tokens=args.max_tokens)  # warm-up
    next_id += args.burst
    runs: dict[str, list[dict]] = {}
    fresh = args.burst
    for _ in range(args.repeats):
        for staggered in (False, True):
            pattern = "staggered" if staggered else "together"
            texts = pool[fresh : fresh + args.burst]
            fresh += args.burst
            for state in ("cold", "cached"):
                result = burst(engine, texts, next_id, staggered=staggered, max_tokens=args.max_tokens)
                next_id += args.burst
                runs.setdefault(f"{pattern}, {state}", []).append(result)
                print(f"{pattern}, {state}: {result}", flush=True)
    summary = {name: statistics.median(run["ttft_p50_ms"] for run in results) for name, results in runs.items()}
    # The step that takes a burst in: for "together", the one that gives the first tokens.
    first_steps = {name: statistics.median(run["first_steps_ms"][0] for run in results) for name, results in runs.items()}
    admissions = {name: statistics.median(run["admit_ms"] for run in results) for name, results in runs.items()}
    output = {
        "model": args.model,
        "burst": args.burst,
        "chat": args.chat,
        "ttft_p50_ms_median": summary,
        "first_step_ms_median": first_steps,
        "admit_ms_median": admissions,
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(output, indent=2))
    print(json.dumps({"ttft_p50_ms_median": summary, "first_step_ms_median": first_steps, "admit_ms_median": admissions}, indent=1))


if __name__ == "__main__":
    main()
