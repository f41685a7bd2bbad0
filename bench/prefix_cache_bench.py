"""Time to first token with a long shared prefix, cached and not: mlx_lm.server and mlxtrio side by side.

    python -m bench.prefix_cache_bench --model demo [--prefix-tokens 2000] [--requests 8] [--repeat 1] [--json OUT]

Both servers keep a prompt cache, and the point of one is the time to first
token of a request whose prompt begins with one seen before: a shared system
prompt, or the next turn of a conversation. One streaming client, one
request at a time, ``max_tokens`` small (only the first token is timed),
greedy. Three patterns, each ``--requests`` requests after one unmeasured:

- ``cold``: a system prompt of about ``--prefix-tokens`` tokens that begins
  with a line of its own for every request, so no two prompts share more
  than the chat template's first tokens: the whole prompt is prefilled;
- ``shared``: the same system prompt every time, another question each
  time: only the question (and the template around it) is new;
- ``turns``: one conversation, each request the previous one's messages,
  the reply the server gave, and a new question.

Reported per server and pattern: TTFT p50 and p95, the prompt's tokens and
the cached tokens the server reported (``usage.prompt_tokens_details``),
medians over the requests. The runs of ``--repeat`` take turns
between the servers; figures are pooled over them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import trio

from ._common import ROOT, write_json
from .bench_models import add_model_options, build_chosen
from .serve_bench import PROMPT_WORDS, percentile, serving, streaming_chat
from .sse_client import LeanClient

SERVERS = ("mlx_lm.server", "mlxtrio")
PATTERNS = ("cold", "shared", "turns")
# Prose for the long prefix: the demo model's training text.
_CORPUS = ROOT / "mlxtrio" / "worker" / "demo_corpus.txt"


def long_text(model_path: Path, tokens: int) -> str:
    """Prose of about ``tokens`` tokens in the model's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    words = _CORPUS.read_text().split()

    def text(count: int) -> str:
        return " ".join(words[index % len(words)] for index in range(count))

    count = tokens
    for _ in range(3):  # scaled by the tokens per word of the text so far: close enough in a few rounds
        count = max(1, round(count * tokens / len(tokenizer.encode(text(count), add_special_tokens=False))))
    return text(count)


def question(index: int) -> str:
    return f"Question {index}: " + " ".join(PROMPT_WORDS[index % 11 :] + PROMPT_WORDS[: index % 11]) + "?"


async def stream_chat(client: LeanClient, url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    body = streaming_chat(model, messages, max_tokens)
    start = time.perf_counter()
    first = None
    parts: list[str] = []
    usage = None
    async with client.stream_lines(url + "/v1/chat/completions", body) as lines:
        async for line in lines:
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"the server failed the request: {event['error']}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                text = choice.get("delta", {}).get("content")
                if text:
                    first = first or time.perf_counter()
                    parts.append(text)
    if usage is None:
        raise RuntimeError("the server sent no usage although stream_options.include_usage was set")
    details = usage.get("prompt_tokens_details") or {}
    return {
        "ttft_s": (first - start) if first is not None else float("nan"),
        "text": "".join(parts),
        "prompt_tokens": usage["prompt_tokens"],
        "cached_tokens": details.get("cached_tokens"),
    }


async def run_patterns(url: str, model: str, prefix: str, requests: int, max_tokens: int, run: int) -> dict:
    client = LeanClient(timeout=600)
    results: dict[str, list[dict]] = {}
    try:
        # A run's own tag: a later run must not find this run's prompts in the cache.
        tag = f"Session {run}-{time.monotonic_ns()}."

        async def pattern(name: str, messages_for) -> None:  # noqa: ANN001
            measured = []
            for index in range(requests + 1):  # the first is not measured: it fills the cache
                outcome = await stream_chat(client, url, model, messages_for(index), max_tokens)
                if index:
                    measured.append({key: value for key, value in outcome.items() if key != "text"})
            results[name] = measured

        await pattern("cold", lambda index: [
            {"role": "system", "content": f"{tag} Conversation {index}.\n{prefix}"},
            {"role": "user", "content": question(index)},
        ])
        system = {"role": "system", "content": f"{tag} Shared.\n{prefix}"}
        await pattern("shared", lambda index: [system, {"role": "user", "content": question(index)}])
        conversation = [{"role": "system", "content": f"{tag} Turns.\n{prefix}"}]
        turns = []
        for index in range(requests + 1):
            conversation.append({"role": "user", "content": question(index)})
            outcome = await stream_chat(client, url, model, conversation, max_tokens)
            conversation.append({"role": "assistant", "content": outcome.pop("text")})
            if index:
                turns.append(outcome)
        results["turns"] = turns
    finally:
        await client.aclose()
    return results


def summarise(requests: list[dict]) -> dict:
    ttfts = [request["ttft_s"] for request in requests]
    cached = [request["cached_tokens"] for request in requests if request["cached_tokens"] is not None]
    return {
        "ttft_p50_ms": round(percentile(ttfts, 0.5) * 1e3, 2),
        "ttft_p95_ms": round(percentile(ttfts, 0.95) * 1e3, 2),
        "prompt_tokens_median": statistics.median(request["prompt_tokens"] for request in requests),
        "cached_tokens_median": statistics.median(cached) if cached else None,
        "requests": len(requests),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--prefix-tokens", type=int, default=2000, help="about how long the system prompt is")
    parser.add_argument("--requests", type=int, default=8, help="measured requests per pattern and run")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="runs, taking turns between the servers")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_path = build_chosen(args).resolve()  # absolute: the servers run in other working directories
    prefix = long_text(model_path, args.prefix_tokens)
    pooled: dict[str, dict[str, list[dict]]] = {server: {name: [] for name in PATTERNS} for server in args.servers}
    by_run: dict[str, list[dict]] = {server: [] for server in args.servers}
    for run in range(args.repeat):
        order = args.servers if run % 2 == 0 else list(reversed(args.servers))
        for server in order:

            async def one(server: str = server, run: int = run) -> dict:
                async with serving(server, str(model_path), args.port, max_tokens=args.max_tokens) as url:
                    return await run_patterns(url, str(model_path), prefix, args.requests, args.max_tokens, run)

            measured = trio.run(one)
            by_run[server].append({name: summarise(requests) for name, requests in measured.items()})
            for name, requests in measured.items():
                pooled[server][name].extend(requests)
            print(f"run {run + 1} {server}: " + ", ".join(
                f"{name} {summary['ttft_p50_ms']} ms (cached {summary['cached_tokens_median']} of {summary['prompt_tokens_median']})"
                for name, summary in by_run[server][-1].items()), file=sys.stderr, flush=True)
    summary = {server: {name: summarise(requests) for name, requests in patterns.items()} for server, patterns in pooled.items()}
    result = {
        "model": args.model,
        "prefix_tokens": args.prefix_tokens,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "repeat": args.repeat,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "pooled": summary,
        "by_run": by_run,
    }
    if args.json:
        write_json(args.json, result)
    lines = ["| pattern | " + " | ".join(f"{server}: TTFT p50 / p95 ms, cached of prompt tokens" for server in args.servers) + " |",
             "| --- |" + " --- |" * len(args.servers)]
    for name in PATTERNS:
        cells = []
        for server in args.servers:
            figures = summary[server][name]
            cached = figures["cached_tokens_median"]
            cells.append(f"{figures['ttft_p50_ms']} / {figures['ttft_p95_ms']}, "
                         f"{'—' if cached is None else cached} of {figures['prompt_tokens_median']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
