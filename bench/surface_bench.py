"""One mlxtrio server, its API surfaces by turns: what each costs per token against chat completions.

    python -m bench.surface_bench --model demo [--surfaces chat messages responses chat-json chat-image]
        [--concurrency 1 32] [--max-tokens 128] [--rounds 2] [--repeat 3] [--json OUT]

The same model, prompts and load (greedy, streamed, ``--max-tokens`` each)
through each surface of one server, the surfaces taking turns in each of
``--repeat`` runs, so that a slow spell of the machine falls on all of them:

- ``chat``: ``/v1/chat/completions``, the reference;
- ``messages``: Anthropic's ``/v1/messages``;
- ``responses``: ``/v1/responses`` (stored, as by default);
- ``chat-json``: chat completions with a ``response_format`` JSON schema of
  its own for every request (grammar-constrained decoding), whose last
  property is a string of at least ``--max-tokens`` × 8 characters, so that
  every reply runs to ``--max-tokens`` as the unconstrained ones do;
- ``chat-image`` (a vision model's, such as ``qwen2-vl-2b-bf16``; asked
  for by name, not run by default): chat completions whose user message is
  an image, then chat's text. Each request's image is its own (a 448 x 448
  PNG of seeded noise, 600 kB, sent as a data: URL, made before the phase
  starts), so that no prompt cache serves it; on Qwen2-VL it is 256 image
  tokens.
  Its stream's tokens/s against chat's on the same model is what decoding
  beside images costs per token; its TTFT holds the image's whole way in
  (upload, decoding, the processor, the vision tower, its tokens' prefill).

Each phase is an unmeasured pass at its concurrency, then ``--rounds``
requests per client in a row. Per surface and concurrency: aggregate
tokens/s, the median stream's tokens/s after its first token, TTFT p50, and
each against chat's of the same run (the median of the runs' ratios).
Tokens are the server's own counts. Models come from ``bench.bench_models``.
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import trio

from ._common import ROOT, write_json
from .bench_models import add_model_options, build_chosen
from .serve_bench import make_client, percentile, prompts, serving, streaming_chat, together
from .sse_client import RequestFailed

TEXT_SURFACES = ["chat", "messages", "responses", "chat-json"]
SURFACES = [*TEXT_SURFACES, "chat-image"]
IMAGE_SIDE = 448
# Every request's number, never repeated: its schema or its image is its own (no cache holds any of them).
_nonces = itertools.count()


def noise_image_url(seed: int, side: int = IMAGE_SIDE) -> str:
    """A ``side`` x ``side`` PNG of seeded RGB noise, as a data: URL."""
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def request(surface: str, model: str, prompt: str, max_tokens: int, nonce: int, image: str | None = None) -> tuple[str, dict]:
    """The path and body of one streamed, greedy request through ``surface``; ``image``: chat-image's URL."""
    if surface == "messages":
        body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": prompt}]}
        return "/v1/messages", body
    if surface == "responses":
        return "/v1/responses", {"model": model, "input": prompt, "max_output_tokens": max_tokens, "temperature": 0, "stream": True}
    content: str | list = prompt
    if surface == "chat-image":
        assert image is not None, "chat-image needs an image"
        content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": prompt}]
    body = streaming_chat(model, [{"role": "user", "content": content}], max_tokens)
    if surface == "chat-json":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": f"reply_{nonce}", "strict": True, "schema": schema(nonce, max_tokens)}}
    return "/v1/chat/completions", body


def schema(nonce: int, max_tokens: int) -> dict:
    """A schema of its own per request (property names differ), whose text outlasts ``max_tokens``."""
    return {
        "type": "object",
        "properties": {
            f"id_{nonce}": {"type": "integer", "minimum": 0, "maximum": 999},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
            "text": {"type": "string", "minLength": max_tokens * 8},
        },
        "required": [f"id_{nonce}", "tags", "text"],
    }


def read_event(surface: str, event: dict) -> tuple[bool, int | None]:
    """Whether ``event`` carries output text, and the completion's token count where it gives it."""
    if surface == "messages":
        if event.get("type") == "content_block_delta":
            return bool(event["delta"].get("text")), None
        if event.get("type") == "message_delta":
            return False, event["usage"]["output_tokens"]
        return False, None
    if surface == "responses":
        kind = event.get("type")
        if kind == "response.output_text.delta":
            return bool(event.get("delta")), None
        if kind in ("response.completed", "response.incomplete"):
            return False, event["response"]["usage"]["output_tokens"]
        return False, None
    usage = event.get("usage")
    choices = event.get("choices") or []
    return bool(choices and choices[0].get("delta", {}).get("content")), usage["completion_tokens"] if usage else None


async def one(client, url: str, surface: str, model: str, prompt: str, max_tokens: int, nonce: int, image: str | None = None) -> tuple | None:  # noqa: ANN001
    """(TTFT, seconds from the first text to the last, tokens), or None if the request failed."""
    path, body = request(surface, model, prompt, max_tokens, nonce, image)
    start = time.perf_counter()
    first = last = tokens = None
    try:
        async with client.stream_lines(url + path, body) as lines:
            async for line in lines:
                if not line.startswith("data: {"):
                    continue
                text, count = read_event(surface, json.loads(line[6:]))
                if text:
                    last = time.perf_counter()
                    first = first or last
                tokens = count if count is not None else tokens
    except RequestFailed as exc:
        print(f"  {surface}: failed: {exc}", file=sys.stderr)
        return None
    if first is None or tokens is None:
        return None
    return first - start, last - first, tokens


async def phase(url: str, surface: str, model: str, concurrency: int, max_tokens: int, rounds: int, texts: list[str], timeout: float) -> dict:
    # An image for each request of the phase, warm-up included, made before it: taken in turn as requests start.
    images = iter([noise_image_url(next(_nonces)) for _ in range(concurrency * (1 + rounds))]) if surface == "chat-image" else itertools.repeat(None)
    client = make_client("lean", connections=concurrency + 4, timeout=timeout)
    results: list = []

    async def user(index: int, rounds: int, sink: list) -> None:
        for round_ in range(rounds):
            prompt = texts[(index + round_ * concurrency) % len(texts)]
            sink.append(await one(client, url, surface, model, prompt, max_tokens, next(_nonces), next(images)))

    try:
        # Unmeasured: kernels for this batch's shapes, and every surface's first request.
        await together(user, concurrency, 1, [])
        wall = await together(user, concurrency, rounds, results)
    finally:
        await client.aclose()
    done = [result for result in results if result is not None]
    rates = [(tokens - 1) / span for _, span, tokens in done if tokens > 1 and span > 0]
    return {
        "aggregate_tps": sum(tokens for _, _, tokens in done) / wall,
        "stream_tps_median": statistics.median(rates) if rates else float("nan"),
        "ttft_p50_s": percentile([ttft for ttft, _, _ in done], 0.5),
        "tokens_per_request": statistics.median(tokens for _, _, tokens in done) if done else 0,
        "errors": len(results) - len(done),
    }


async def run_once(url: str, model: str, surfaces: list[str], concurrencies: list[int], max_tokens: int, rounds: int, timeout: float) -> dict:
    texts = prompts(64)
    run: dict = {surface: {} for surface in surfaces}
    for concurrency in concurrencies:
        for surface in surfaces:
            run[surface][concurrency] = measured = await phase(url, surface, model, concurrency, max_tokens, rounds, texts, timeout)
            print(f"  {surface}, {concurrency} streams: {measured}", file=sys.stderr, flush=True)
    return run


async def bench(
    model_path: str, surfaces: list[str], concurrencies: list[int], max_tokens: int, rounds: int, repeat: int, port: int, timeout: float
) -> list:
    runs = []
    async with serving("mlxtrio", model_path, port, max_tokens=max_tokens, decode_concurrency=max(32, *concurrencies)) as url:
        for _ in range(repeat):
            runs.append(await run_once(url, model_path, surfaces, concurrencies, max_tokens, rounds, timeout))
    return runs


def summary(runs: list, surfaces: list[str], concurrencies: list[int]) -> dict:
    """Each figure's median over the runs; each surface against chat by the median of the runs' ratios."""
    out: dict = {}
    for surface in surfaces:
        out[surface] = {}
        for concurrency in concurrencies:
            figures = {key: statistics.median(run[surface][concurrency][key] for run in runs)
                       for key in ("aggregate_tps", "stream_tps_median", "ttft_p50_s", "tokens_per_request")}
            figures["errors"] = sum(run[surface][concurrency]["errors"] for run in runs)
            if "chat" in surfaces:
                for key in ("aggregate_tps", "stream_tps_median"):
                    ratios = [run[surface][concurrency][key] / run["chat"][concurrency][key] for run in runs]
                    figures[f"{key}_vs_chat"] = statistics.median(ratios)
                    figures[f"{key}_vs_chat_runs"] = ratios
            out[surface][concurrency] = figures
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--surfaces", nargs="+", choices=SURFACES, default=TEXT_SURFACES, help="chat-image: a vision model's")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client in each measured phase")
    parser.add_argument("--repeat", type=int, default=3, help="runs, the surfaces taking turns in each")
    parser.add_argument("--port", type=int, default=18640)
    parser.add_argument("--timeout", type=float, default=600, help="seconds a request may take before it counts as failed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_path = str(build_chosen(args).resolve())
    runs = trio.run(bench, model_path, args.surfaces, args.concurrency, args.max_tokens, args.rounds, args.repeat, args.port, args.timeout)
    figures = summary(runs, args.surfaces, args.concurrency)
    results = {"model": args.model, "max_tokens": args.max_tokens, "rounds": args.rounds, "repeat": args.repeat,
               "concurrency": args.concurrency, "checkout": str(ROOT), "summary": figures, "runs": runs}
    if args.json:
        write_json(args.json, results)
    print(f"model {args.model}, max_tokens {args.max_tokens}, medians of {args.repeat} runs, surfaces by turns")
    print("| surface | streams | aggregate tok/s | / chat | stream tok/s | / chat | TTFT p50 ms | tokens a request | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for surface in args.surfaces:
        for concurrency in args.concurrency:
            f = figures[surface][concurrency]
            print(f"| {surface} | {concurrency} | {f['aggregate_tps']:.1f} | {f.get('aggregate_tps_vs_chat', float('nan')):.3f} | "
                  f"{f['stream_tps_median']:.1f} | {f.get('stream_tps_median_vs_chat', float('nan')):.3f} | "
                  f"{f['ttft_p50_s'] * 1e3:.1f} | {f['tokens_per_request']:.0f} | {f['errors']} |")


if __name__ == "__main__":
    main()
