"""Time to first token of a long prompt that arrives while other streams decode, and the stall it causes them.

    python -m bench.load_ttft_bench --model demo [--streams 31] [--prompt-tokens 4096] [--arrivals 3]
        [--servers mlx_lm.server mlxtrio] [--repeat N] [--json OUT]

For each server, by turns in each of ``--repeat`` runs, on one server process:

1. warm-up: two long prompts alone (the second finds the chat template's
   opening in a prompt cache: a prefill of another shape), then ``--streams``
   short requests together (kernels for the prefill's and the batch's shapes);
2. *alone*: one long prompt (about ``--prompt-tokens`` tokens, its own from
   the first word, so no prompt cache serves it) with nothing else running:
   its time to first token;
3. ``--streams`` short prompts decode (greedy, ``--decode-tokens`` each); once
   all of them stream, after a second of steady decoding, a long prompt
   arrives, then another once it is answered and a second has passed, one
   unmeasured and ``--arrivals`` measured. For each: its time to first
   token, and the decoding streams' gaps between text events from its
   arrival to half a second after its first token (the *window*), against
   their gaps in the second before it (*steady*): the median stream's
   longest gap in the window, the longest of all, and p99 of all the
   window's gaps.

Every figure is the median over the arrivals (and the runs). Models come
from ``bench.bench_models``; servers start as ``bench.serve_bench`` starts them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import trio

from ._common import write_json
from .bench_models import add_model_options, build_chosen
from .serve_bench import long_prompts, make_client, percentile, prompts, serving, streaming_chat
from .sse_client import RequestFailed

SETTLE_S = 1.0  # steady decoding before an arrival, and after its first token before the next
AFTER_S = 0.5  # how long after the newcomer's first token its stall is still counted


async def timed(client, url: str, model: str, prompt: str, max_tokens: int, times: list[float]) -> None:  # noqa: ANN001
    """Stream one chat completion, appending the time of each event with text to ``times``."""
    body = streaming_chat(model, [{"role": "user", "content": prompt}], max_tokens)
    async with client.stream_lines(url + "/v1/chat/completions", body) as lines:
        async for line in lines:
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    times.append(time.perf_counter())


async def first_token(client, url: str, model: str, prompt: str) -> float:  # noqa: ANN001
    """Seconds from sending ``prompt`` to its first text event (the request runs to its end)."""
    times: list[float] = []
    start = time.perf_counter()
    await timed(client, url, model, prompt, 8, times)
    if not times:
        raise RequestFailed("no text came back")
    return times[0] - start


def window_figures(streams: list[list[float]], arrival: float, first: float) -> dict:
    """The decoding streams' gaps before ``arrival`` and from it to just after the newcomer's ``first`` token."""
    steady, window, longest = [], [], []
    for times in streams:
        gaps = [(b, b - a) for a, b in zip(times, times[1:], strict=False)]
        steady += [gap for end, gap in gaps if arrival - SETTLE_S <= end <= arrival]
        # A gap that ends after the arrival began before or at it: the stall the arrival caused, whole.
        inside = [gap for end, gap in gaps if arrival < end <= first + AFTER_S]
        window += inside
        if inside:
            longest.append(max(inside))
    return {
        "steady_gap_p50_s": percentile(steady, 0.5),
        "stall_median_stream_s": statistics.median(longest) if longest else float("nan"),
        "stall_max_s": max(longest, default=float("nan")),
        "window_gap_p99_s": percentile(window, 0.99),
    }


async def measure(url: str, model: str, model_path: str, streams: int, prompt_tokens: int, arrivals: int,
                  decode_tokens: int, tag: str) -> dict:
    long = long_prompts(model_path, arrivals + 4, prompt_tokens, tag)
    short = prompts(streams)
    client = make_client("lean", connections=streams + 8)
    try:
        for prompt in long[:2]:
            await first_token(client, url, model, prompt)
        async with trio.open_nursery() as nursery:
            for prompt in short:
                nursery.start_soon(timed, client, url, model, prompt, 16, [])
        alone = await first_token(client, url, model, long[2])
        series: list[list[float]] = [[] for _ in short]
        figures = []
        async with trio.open_nursery() as nursery:
            for prompt, times in zip(short, series, strict=True):
                nursery.start_soon(timed, client, url, model, prompt, decode_tokens, times)
            while not all(series):
                await trio.sleep(0.01)
            for index in range(arrivals + 1):
                await trio.sleep(SETTLE_S)
                arrival = time.perf_counter()
                ttft = await first_token(client, url, model, long[3 + index])
                await trio.sleep(AFTER_S)
                if any(len(times) >= decode_tokens for times in series):
                    raise RuntimeError(f"a decoding stream ended before arrival {index} was measured: raise --decode-tokens")
                if index:  # the first under load is a warm-up: kernels for prefill beside a decoding batch
                    figures.append({"ttft_s": ttft, **window_figures(series, arrival, arrival + ttft)})
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    result = {key: statistics.median(figure[key] for figure in figures) for key in figures[0]}
    return {"alone_ttft_s": alone, **result, "arrivals": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--streams", type=int, default=31, help="streams decoding when the long prompt arrives")
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--arrivals", type=int, default=3, help="measured arrivals, one after another")
    parser.add_argument("--decode-tokens", type=int, default=4096, help="max_tokens of the decoding streams: enough to outlast the arrivals")
    parser.add_argument("--servers", nargs="+", choices=["mlx_lm.server", "mlxtrio"], default=["mlx_lm.server", "mlxtrio"])
    parser.add_argument("--repeat", type=int, default=1, help="runs, the servers taking turns")
    parser.add_argument("--port", type=int, default=18660)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_path = str(build_chosen(args).resolve())

    async def one_server(kind: str, run: int) -> dict:
        port = args.port + 10 * args.servers.index(kind)
        async with serving(kind, model_path, port, max_tokens=args.decode_tokens, decode_concurrency=max(32, args.streams + 1)) as url:
            return await measure(url, model_path, model_path, args.streams, args.prompt_tokens, args.arrivals,
                                 args.decode_tokens, f"{kind}-{run}")

    runs = []
    for run in range(args.repeat):
        runs.append({kind: trio.run(one_server, kind, run) for kind in args.servers})
        print(f"  run {run}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    figures = {kind: {key: statistics.median(r[kind][key] for r in runs) for key in runs[0][kind] if key != "arrivals"}
               for kind in args.servers}
    if args.json:
        write_json(args.json, {"model": args.model, "streams": args.streams, "prompt_tokens": args.prompt_tokens,
                               "arrivals": args.arrivals, "repeat": args.repeat, "figures": figures, "runs": runs})
    print(f"model {args.model}: a {args.prompt_tokens}-token prompt arriving while {args.streams} streams decode; "
          f"medians of {args.arrivals} arrivals × {args.repeat} runs, ms")
    print("| server | TTFT alone | TTFT under load | steady gap p50 | stall, median stream | stall, longest | window gap p99 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, f in figures.items():
        print(f"| {kind} | {f['alone_ttft_s'] * 1e3:.0f} | {f['ttft_s'] * 1e3:.0f} | {f['steady_gap_p50_s'] * 1e3:.1f} | "
              f"{f['stall_median_stream_s'] * 1e3:.0f} | {f['stall_max_s'] * 1e3:.0f} | {f['window_gap_p99_s'] * 1e3:.0f} |")


if __name__ == "__main__":
    main()
