"""Side by side, same model, same prompts: in-process mlx-lm, mlx_lm.server, mlxtrio.

    python -m bench.serve_bench --model demo [--concurrency 1 8 32] [--max-tokens 128] [--rounds 2] [--repeat N]
        [--servers in-process mlx_lm.server mlxtrio] [--checkout DIR] [--json OUT] [--prompt-tokens N]
        [--group N [--parallel tensor]]

Run it from a checkout's root. mlxtrio is served from the checkout this
file is in, or from ``--checkout DIR`` (another checkout's root): its
directory first on ``PYTHONPATH`` and as the working directory, whatever
copy of mlxtrio is installed. So a change is compared by turns with the
same harness: ``--servers mlxtrio`` against each checkout in turn.

1. in-process mlx-lm: ``stream_generate`` for one stream, ``BatchGenerator``
   for many — the ceiling (no HTTP, no IPC);
2. ``mlx_lm.server`` — what most users would run instead;
3. mlxtrio (``python -m mlxtrio serve``).

For each it reports single-stream decode tokens/s, time to first token
(p50, p95) and aggregate tokens/s at each concurrency, with ratios against (1)
and (2). The load comes from one async client in this process (Trio and
h11, ``bench.sse_client``; ``--client httpx`` for the heavier httpx client);
its CPU use is reported so a starved client shows. Every
request is greedy with the same prompt set and ``max_tokens``. Tokens are
the servers' own counts (``stream_options.include_usage``), so a sequence
that ends early counts as it is and text a detokenizer holds back is not
undercounted; time to first token is to the first event with text, and
``tokens_per_text_event`` says how far apart the two are (1.0: none).
Inter-token latency is the time between a stream's text events (p50, p99 of
all of a phase's gaps together); TTFT p99 is beside p50 and p95.

``--prompt-tokens N``: every request's prompt about N tokens long and its
own from its first word, so that no prompt cache serves any of it (the
default prompts, about 60 tokens, repeat from round to round).

Models are built by ``bench.bench_models`` (no downloads). Runs the same on
a Linux CUDA machine (``bench/gpu_runs.sh``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import trio

from ._common import ROOT, checkout_environment, write_json
from .bench_models import add_model_options, build_chosen
from .server_process import stop
from .sse_client import HttpxClient, LeanClient, RequestFailed

# The name a --group run serves the model under.
GROUP_MODEL = "bench-group"

PROMPT_WORDS = (
    "Explain how a server keeps many clients happy at once, why each token should reach its "
    "client quickly, and what happens when a worker process fails in the middle of a request"
).split()


def prompts(count: int) -> list[str]:
    """Distinct prompts of similar length (about 60 tokens for a real tokenizer)."""
    return [f"Request {index}: " + " ".join(PROMPT_WORDS[index % 7 :] + PROMPT_WORDS[: index % 7]) for index in range(count)]


def long_prompts(model_path: str, count: int, tokens: int, tag: str) -> list[str]:
    """``count`` prompts of about ``tokens`` tokens with the chat template, no two alike from their first word.

    ``tag`` tells one batch of them from another (a phase's warm-up, its measured requests, another phase).
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    texts = []
    for index in range(count):
        rng = random.Random(f"{tag}-{index}")
        words = f"Request {tag}-{index}: " + " ".join(rng.choice(PROMPT_WORDS) for _ in range(tokens))
        # The chat template adds about a dozen tokens around the text.
        texts.append(tokenizer.decode(tokenizer.encode(words, add_special_tokens=False).ids[: max(1, tokens - 12)]))
    return texts


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


# --- (1) in-process mlx-lm, in a subprocess of its own (its memory goes when it ends) --------


def timed_stream_generate(model, tokenizer, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:  # noqa: ANN001
    """One ``stream_generate``: seconds to its first token, tokens/s after it, and its tokens."""
    import mlx_lm

    start = time.perf_counter()
    first = None
    tokens = 0
    for _ in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
        tokens += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (tokens - 1) / (end - first), tokens


def in_process(model_path: str, concurrencies: list[int], max_tokens: int, samples: int = 3, prompt_tokens: int = 0) -> dict:
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.generate import BatchGenerator

    model, tokenizer = mlx_lm.load(model_path)
    count = max(*concurrencies, samples, 3)
    texts = long_prompts(model_path, count, prompt_tokens, "in-process") if prompt_tokens else prompts(count)
    encoded = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]
    # Warm up (kernels, caches).
    for _ in mlx_lm.stream_generate(model, tokenizer, encoded[0], max_tokens=16):
        pass
    result: dict = {}
    ttfts, rates = [], []
    # As many single streams as a server gets (--rounds), at least 3: one run is noise on a GPU.
    for prompt in encoded[: max(3, samples)]:
        ttft, rate, _ = timed_stream_generate(model, tokenizer, prompt, max_tokens)
        ttfts.append(ttft)
        rates.append(rate)
    result["single_stream_tps"] = statistics.median(rates)
    result["ttft_p50_s"] = {1: statistics.median(ttfts)}
    print(f"  in-process, single streams: {result['single_stream_tps']:.1f} tok/s, TTFTs {[round(ttft, 3) for ttft in ttfts]} s", file=sys.stderr, flush=True)
    result["aggregate_tps"] = {}
    # The batch's own, from its start: each sequence's first token, and the gaps between its tokens.
    for key in ("batch_ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s"):
        result[key] = {}

    def run_batch(batch: list, tokens_each: int) -> tuple[int, list[float], list[float]]:
        start = time.perf_counter()
        generator = BatchGenerator(model, max_tokens=tokens_each, completion_batch_size=max(32, len(batch)))
        uids = generator.insert(batch, max_tokens=[tokens_each] * len(batch))
        last = dict.fromkeys(uids, start)
        ttfts, gaps = [], []
        tokens = finished = 0
        while finished < len(batch):
            responses = generator.next_generated()
            now = time.perf_counter()
            for response in responses:
                tokens += 1
                finished += response.finish_reason is not None
                (gaps if last[response.uid] > start else ttfts).append(now - last[response.uid])
                last[response.uid] = now
        mx.synchronize()
        generator.close()
        return tokens, ttfts, gaps

    for concurrency in concurrencies:
        batch = (encoded * (concurrency // len(encoded) + 1))[:concurrency]
        run_batch(batch, max_tokens)  # warm-up: kernels for this batch size
        start = time.perf_counter()
        tokens, ttfts, gaps = run_batch(batch, max_tokens)
        result["aggregate_tps"][concurrency] = tokens / (time.perf_counter() - start)
        result["batch_ttft_p50_s"][concurrency] = percentile(ttfts, 0.5)
        result["ttft_p99_s"][concurrency] = percentile(ttfts, 0.99)
        result["itl_p50_s"][concurrency] = percentile(gaps, 0.5)
        result["itl_p99_s"][concurrency] = percentile(gaps, 0.99)
        # As each phase ends, so that a run stopped later keeps what it measured.
        phase = {key: values[concurrency] for key, values in result.items() if isinstance(values, dict) and concurrency in values}
        print(f"  in-process, {concurrency} streams: {phase}", file=sys.stderr, flush=True)
    return result


# --- (2) and (3): servers over HTTP ----------------------------------------------------------


async def wait_ready(url: str, process: subprocess.Popen, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if (await client.get(url + "/v1/models")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await trio.sleep(0.2)
    raise RuntimeError("server did not become ready")


@attrs.frozen
class Outcome:
    """One streaming request as the client saw it."""

    ttft: float  # seconds from sending to the first event with text
    span: float  # seconds from that event to the last one
    tokens: int  # completion tokens, from the server's own usage count; -1: the request failed
    text_events: int  # events that carried text (fewer than tokens if text was held back)
    gaps: tuple[float, ...] = ()  # seconds between one text event and the next
    prompt_tokens: int = 0  # the server's own count


FAILED = Outcome(float("nan"), 0.0, -1, 0)


Client = LeanClient | HttpxClient


def make_client(kind: str, *, connections: int, timeout: float = 600) -> Client:
    """``lean`` (h11, the default) or ``httpx``: see bench/sse_client.py."""
    if kind == "httpx":
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return HttpxClient(httpx.AsyncClient(timeout=timeout, limits=limits))
    return LeanClient(timeout=timeout)


async def one_request(client: Client, url: str, model: str, prompt: str, max_tokens: int) -> Outcome:
    """A request the server refuses or drops counts as an error, not a crash of the run."""
    try:
        return await _stream_one(client, url, model, prompt, max_tokens)
    except RequestFailed:
        return FAILED


def streaming_chat(model: str, messages: list[dict], max_tokens: int) -> dict:
    """The body of every benchmark request: greedy, streamed, with the usage at the end."""
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _stream_one(client: Client, url: str, model: str, prompt: str, max_tokens: int) -> Outcome:
    body = streaming_chat(model, [{"role": "user", "content": prompt}], max_tokens)
    start = time.perf_counter()
    first = last = None
    text_events = 0
    usage = None
    gaps = []
    async with client.stream_lines(url + "/v1/chat/completions", body) as lines:
        async for line in lines:
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            choices = event.get("choices") or []
            if not choices:
                continue
            now = time.perf_counter()
            if choices[0].get("delta", {}).get("content"):
                if first is not None:
                    gaps.append(now - last)
                first = first or now
                text_events += 1
                last = now
            elif choices[0].get("finish_reason") and first is not None:
                last = now
    # Tokens are the server's own count: text events undercount whenever a
    # detokenizer holds bytes back and sends several tokens' text at once.
    if usage is None:
        raise RuntimeError("the server sent no usage although stream_options.include_usage was set")
    if first is None:
        return Outcome(float("nan"), 0.0, usage["completion_tokens"], 0)
    return Outcome(
        first - start, last - first, usage["completion_tokens"], text_events, tuple(gaps), usage.get("prompt_tokens", 0)
    )


def warm_rounds(concurrency: int) -> int:
    """Warm-up rounds before prompts of their own: two at least, since only a second prompt finds the chat
    template's opening in a prompt cache, a prefill of another shape (whose kernels MLX CUDA compiles once)."""
    return max(1, 2 // concurrency)


def unique_prompts(concurrency: int, rounds: int) -> int:
    return concurrency * rounds + concurrency * warm_rounds(concurrency)


async def together(user, concurrency: int, *args) -> float:  # noqa: ANN001
    """``user(index, *args)`` for each of ``concurrency`` clients at once; the seconds until all are done."""
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(user, index, *args)
    return time.perf_counter() - start


async def load(
    url: str, model: str, concurrency: int, max_tokens: int, rounds: int, client_kind: str, texts: list[str] | None = None
) -> dict:
    """``texts``: every request's own prompt, ``unique_prompts(concurrency, rounds)`` of them (the warm-up's last)."""
    unique = texts is not None
    texts = texts or prompts(max(concurrency, 8))
    results: list[Outcome] = []
    client = make_client(client_kind, connections=concurrency + 4)
    try:

        async def user(index: int, rounds: int, sink: list, offset: int = 0) -> None:
            for round_ in range(rounds):
                prompt = texts[(offset + index + round_ * concurrency) % len(texts)]
                sink.append(await one_request(client, url, model, prompt, max_tokens))

        # An unmeasured pass at the same concurrency first: MLX compiles kernels
        # per shape (on CUDA at run time), which is not what this measures.
        await together(user, concurrency, warm_rounds(concurrency) if unique else 1, [], rounds * concurrency if unique else 0)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        wall = await together(user, concurrency, rounds, results)
    finally:
        await client.aclose()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    errors = sum(1 for result in results if result.tokens < 0)
    results = [result for result in results if result.tokens >= 0]
    ttfts = [result.ttft for result in results]
    gaps = [gap for result in results for gap in result.gaps]
    per_stream = [(result.tokens - 1) / result.span for result in results if result.tokens > 1 and result.span > 0]
    tokens = sum(result.tokens for result in results)
    return {
        "errors": errors,
        "aggregate_tps": tokens / wall,
        # 1.0 when every token's text reached the client in an event of its own.
        "tokens_per_text_event": tokens / max(1, sum(result.text_events for result in results)),
        "stream_tps_median": statistics.median(per_stream) if per_stream else float("nan"),
        "ttft_p50_s": percentile(ttfts, 0.5),
        "ttft_p95_s": percentile(ttfts, 0.95),
        "ttft_p99_s": percentile(ttfts, 0.99),
        "itl_p50_s": percentile(gaps, 0.5),
        "itl_p99_s": percentile(gaps, 0.99),
        "prompt_tokens": statistics.median(result.prompt_tokens for result in results) if results else 0,
        # Every request's, for percentiles pooled over repeated runs.
        "ttfts_s": sorted(round(ttft, 6) for ttft in ttfts),
        "requests": len(results),
        "client_cpu_cores": cpu / wall,
    }


@contextlib.asynccontextmanager
async def serving(
    kind: str, model_path: str, port: int, *, max_tokens: int, decode_concurrency: int = 32, checkout: Path = ROOT,
    group: int = 1, parallel: str = "pipeline",
) -> AsyncIterator[str]:
    """mlx_lm.server, or mlxtrio of ``checkout``, on ``port`` with the model, ready; its URL.

    ``group`` > 1: mlxtrio serves the model as ``GROUP_MODEL``, split over that many ranks on this machine.
    Its log in $SERVE_BENCH_LOGS (/tmp).
    """
    url = f"http://127.0.0.1:{port}"
    if kind == "mlx_lm.server":
        command = [sys.executable, "-m", "mlx_lm", "server", "--model", model_path, "--port", str(port),
                   "--max-tokens", str(max_tokens), "--decode-concurrency", str(decode_concurrency),
                   "--log-level", "WARNING"]
        env, cwd = dict(os.environ), None
    else:
        command = [sys.executable, "-m", "mlxtrio", "serve", "--model", model_path, "--port", str(port),
                   "--admin-port", str(port + 1), "--log-level", "WARNING"]
        env = checkout_environment(checkout, MLX_CACHE_DIR=os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
        cwd = checkout
        if group > 1:
            # A worker group is a config file's model: its ranks' hosts, all this machine's loopback here.
            config = Path(tempfile.mkdtemp(prefix="serve-bench-")) / "models.toml"
            hosts = ", ".join(['"127.0.0.1"'] * group)
            config.write_text(f'[models.{GROUP_MODEL}]\npath = "{model_path}"\nhosts = [{hosts}]\nparallel = "{parallel}"\n')
            command[command.index("--model") : command.index("--model") + 2] = ["--config", str(config)]
    log = open(os.environ.get("SERVE_BENCH_LOGS", "/tmp") + f"/serve_bench.{kind}.log", "w+b")  # noqa: SIM115
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=log)
    try:
        try:
            await wait_ready(url, process)
        except RuntimeError:
            log.seek(0)
            sys.stderr.write(log.read()[-4000:].decode(errors="replace"))
            raise
        yield url
    finally:
        stop(process)
        log.close()


async def bench_server(
    kind: str, model_path: str, concurrencies: list[int], max_tokens: int, rounds: int, port: int, client_kind: str,
    checkout: Path, prompt_tokens: int = 0, group: int = 1, parallel: str = "pipeline",
) -> dict:
    # Both serve the model under its path; a group, under its config file's name.
    model_id = GROUP_MODEL if kind == "mlxtrio" and group > 1 else model_path
    decode_concurrency = max(32, max(concurrencies))
    async with serving(
        kind, model_path, port, max_tokens=max_tokens, decode_concurrency=decode_concurrency, checkout=checkout, group=group, parallel=parallel
    ) as url:
        result: dict = {"aggregate_tps": {}, "ttft_p50_s": {}, "ttft_p95_s": {}, "client_cpu_cores": {}, "errors": {},
                        "tokens_per_text_event": {}, "ttfts_s": {}, "ttft_p99_s": {}, "itl_p50_s": {}, "itl_p99_s": {},
                        "prompt_tokens": {}}
        for concurrency in concurrencies:
            # A phase's prompts of its own: a prompt cache holds the earlier phases'.
            texts = long_prompts(model_path, unique_prompts(concurrency, rounds), prompt_tokens, f"c{concurrency}") if prompt_tokens else None
            measured = await load(url, model_id, concurrency, max_tokens, rounds, client_kind, texts)
            if concurrency == 1:
                result["single_stream_tps"] = measured["stream_tps_median"]
            result["aggregate_tps"][concurrency] = measured["aggregate_tps"]
            result["ttft_p50_s"][concurrency] = measured["ttft_p50_s"]
            result["ttft_p95_s"][concurrency] = measured["ttft_p95_s"]
            result["client_cpu_cores"][concurrency] = measured["client_cpu_cores"]
            result["errors"][concurrency] = measured["errors"]
            result["tokens_per_text_event"][concurrency] = measured["tokens_per_text_event"]
            result["ttfts_s"][concurrency] = measured.pop("ttfts_s")
            for key in ("ttft_p99_s", "itl_p50_s", "itl_p99_s", "prompt_tokens"):
                result[key][concurrency] = measured[key]
            print(f"  {kind}, {concurrency} streams: {measured}", file=sys.stderr, flush=True)
        return result


def median_over_runs(runs: list, *, add: bool = False):  # noqa: ANN201 - the runs' own shape
    """One result of the same shape as each run's: every figure the median over the runs, failures their sum,
    per-request lists pooled.

    A machine's speed drifts from run to run (docs/PERFORMANCE.md, "Method");
    the runs take turns, so slow spells of the machine fall on all of them.
    """
    first = runs[0]
    if isinstance(first, list):  # one value per request: all the runs' requests together
        return sorted(value for run in runs for value in run)
    if isinstance(first, dict):
        return {key: median_over_runs([run[key] for run in runs], add=add or key == "errors") for key in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(runs) if add else statistics.median(runs)
    return first


def commit_of(checkout: Path) -> str | None:
    """The commit ``checkout`` has out, with ``+`` if its tracked files differ from it; None outside git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        return None
    return head.stdout.strip() + ("+" if git("diff", "--quiet", "HEAD").returncode else "")


def report(results: dict) -> str:
    base, rival, ours = results["in_process"], results["mlx_lm.server"], results["mlxtrio"]
    lines = [
        f"model {results['model']}, max_tokens {results['max_tokens']}, {results['machine']}, "
        f"in-process {'pinned to one core' if results['in_process_pinned'] else 'not pinned'}, "
        f"MLX_WORKER_CPUS={results['mlx_worker_cpus']}"
        + (f", medians of {results['repeat']} runs taking turns" if results.get("repeat", 1) > 1 else ""),
        "",
        "| measure | in-process mlx-lm | mlx_lm.server | mlxtrio | mlxtrio / in-process | mlxtrio / mlx_lm.server |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def row(name: str, a: float, b: float, c: float, fmt: str = "{:.1f}") -> None:
        lines.append(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {fmt.format(c)} | {c / a:.2f}× | {c / b:.2f}× |")

    if "single_stream_tps" in rival:  # measured when 1 is among the concurrencies
        row("single-stream decode tok/s", base["single_stream_tps"], rival["single_stream_tps"], ours["single_stream_tps"])
    for concurrency in results["concurrency"]:
        row(f"aggregate tok/s, {concurrency} streams", base["aggregate_tps"][concurrency],
            rival["aggregate_tps"][concurrency], ours["aggregate_tps"][concurrency])
    for concurrency in results["concurrency"]:
        lines.append(
            f"| TTFT p50 / p95 ms, {concurrency} streams | — | "
            f"{rival['ttft_p50_s'][concurrency] * 1e3:.0f} / {rival['ttft_p95_s'][concurrency] * 1e3:.0f} | "
            f"{ours['ttft_p50_s'][concurrency] * 1e3:.0f} / {ours['ttft_p95_s'][concurrency] * 1e3:.0f} | — | "
            f"{ours['ttft_p50_s'][concurrency] / rival['ttft_p50_s'][concurrency]:.2f}× |"
        )
    for concurrency in results["concurrency"]:
        for name, key in (("TTFT p99 ms", "ttft_p99_s"), ("inter-token p99 ms", "itl_p99_s")):
            # In-process: the BatchGenerator's own, from the batch's start.
            row(f"{name}, {concurrency} streams", base[key][concurrency] * 1e3, rival[key][concurrency] * 1e3,
                ours[key][concurrency] * 1e3, "{:.0f}" if key == "ttft_p99_s" else "{:.1f}")
    for name, result in (("mlx_lm.server", rival), ("mlxtrio", ours)):
        failed = {c: n for c, n in result["errors"].items() if n}
        if failed:
            lines.append(f"| failed requests, {name} | " + ", ".join(f"{n} of {c * results['rounds'] * results.get('repeat', 1)} at {c} streams" for c, n in failed.items()) + " | | | | |")
    cores = {c: max(rival["client_cpu_cores"][c], ours["client_cpu_cores"][c]) for c in results["concurrency"]}
    lines.append("")
    lines.append("client CPU (cores busy, worst of the two servers): " + ", ".join(f"{c} streams {v:.2f}" for c, v in cores.items()))
    worst = max(value for result in (rival, ours) for value in result["tokens_per_text_event"].values())
    lines.append(f"tokens per text event, worst of all phases: {worst:.2f} (1.00: no text held back)")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--in-process"]:
        if sys.argv[5:6] == ["pin"]:
            from mlxtrio.tuning import batch_this_process

            # Before MLX starts its threads: all of them on one core under SCHED_BATCH, as mlxtrio's worker.
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
            batch_this_process()
        prompt_tokens = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        print(json.dumps(in_process(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6]), prompt_tokens)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each concurrency")
    parser.add_argument("--port", type=int, default=18600)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="run the chosen ones this many times, taking turns; figures are medians over the runs (each run is kept too)",
    )
    parser.add_argument(
        "--pin-in-process", action="store_true",
        help="run the in-process baseline on one core under SCHED_BATCH, as mlxtrio runs its worker on the CPU backend (Linux)",
    )
    parser.add_argument(
        "--client", choices=["lean", "httpx"], default="lean",
        help="the load's HTTP client: h11 driven directly (default), or httpx, about four times the CPU per request",
    )
    parser.add_argument(
        "--servers", nargs="+", default=["in-process", "mlx_lm.server", "mlxtrio"],
        choices=["in-process", "mlx_lm.server", "mlxtrio"], help="which of the three to run (default: all)",
    )
    parser.add_argument(
        "--group", type=int, default=1,
        help="serve the model with mlxtrio as a worker group of this many ranks on this machine (mlx.distributed's ring)",
    )
    parser.add_argument("--parallel", choices=["pipeline", "tensor"], default="pipeline", help="how a --group splits the model")
    parser.add_argument(
        "--checkout", type=Path, default=ROOT,
        help="the repository root whose mlxtrio is served (default: the one this harness is in)",
    )
    parser.add_argument(
        "--prompt-tokens", type=int, default=0,
        help="prompts of about this many tokens, each request's its own (default: the short prompts, repeated)",
    )
    args = parser.parse_args()
    if args.pin_in_process and not hasattr(os, "sched_setaffinity"):
        parser.error("--pin-in-process needs Linux (os.sched_setaffinity)")
    checkout = args.checkout.resolve()
    if not (checkout / "mlxtrio" / "__init__.py").exists():
        parser.error(f"--checkout {args.checkout}: no mlxtrio package there")
    # Absolute: the servers run in other working directories.
    model_path = str(build_chosen(args).resolve())
    results: dict = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "prompt_tokens": args.prompt_tokens,
        "client": args.client,
        "in_process_pinned": args.pin_in_process,
        "mlx_worker_cpus": os.environ.get("MLX_WORKER_CPUS", "auto"),
        "mlxtrio_group": {"ranks": args.group, "parallel": args.parallel} if args.group > 1 else None,
        "mlxtrio_checkout": str(checkout),
        "mlxtrio_commit": commit_of(checkout),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    runs = []
    for _ in range(args.repeat):
        run: dict = {}
        if "in-process" in args.servers:
            baseline = subprocess.run(
                [sys.executable, "-m", "bench.serve_bench", "--in-process", model_path, json.dumps(args.concurrency),
                 str(args.max_tokens), "pin" if args.pin_in_process else "free", str(args.rounds), str(args.prompt_tokens)],
                stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT, env=checkout_environment(),
            )
            run["in_process"] = json.loads(baseline.stdout.strip().splitlines()[-1])
            run["in_process"]["aggregate_tps"] = {int(k): v for k, v in run["in_process"]["aggregate_tps"].items()}
            for key in ("ttft_p50_s", "batch_ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s"):
                run["in_process"][key] = {int(k): v for k, v in run["in_process"][key].items()}
        for kind, port in (("mlx_lm.server", args.port), ("mlxtrio", args.port + 10)):
            if kind in args.servers:
                run[kind] = trio.run(
                    bench_server, kind, model_path, args.concurrency, args.max_tokens, args.rounds, port, args.client, checkout,
                    args.prompt_tokens, args.group, args.parallel,
                )
        runs.append(run)
    results.update(median_over_runs(runs))
    if args.repeat > 1:
        results["repeat"] = args.repeat
        results["runs"] = runs
        for kind in ("mlx_lm.server", "mlxtrio"):
            if 1 in args.concurrency and kind in runs[0] and "in_process" in runs[0]:
                ratios = [run[kind]["single_stream_tps"] / run["in_process"]["single_stream_tps"] for run in runs]
                print(f"{kind} / in-process, single-stream decode, run by run: " + ", ".join(f"{r:.2f}×" for r in ratios))
        # A run's TTFT p50 can sit on either side of a gap in the distribution
        # (mlx_lm.server's at 8 streams: tens of ms in some runs, hundreds in
        # others), so the percentiles of all the runs' requests together too.
        results["pooled"] = {
            kind: {
                concurrency: {
                    "ttft_p50_s": percentile(results[kind]["ttfts_s"][concurrency], 0.5),
                    "ttft_p95_s": percentile(results[kind]["ttfts_s"][concurrency], 0.95),
                    "requests": len(results[kind]["ttfts_s"][concurrency]),
                }
                for concurrency in args.concurrency
            }
            for kind in ("mlx_lm.server", "mlxtrio") if kind in runs[0]
        }
        for concurrency in args.concurrency:
            for kind, pooled in results["pooled"].items():
                print(
                    f"{kind}, {concurrency} streams, TTFT p50 run by run: "
                    + ", ".join(f"{run[kind]['ttft_p50_s'][concurrency] * 1e3:.1f}" for run in runs)
                    + f" ms; pooled p50 / p95 {pooled[concurrency]['ttft_p50_s'] * 1e3:.1f} / {pooled[concurrency]['ttft_p95_s'] * 1e3:.1f} ms"
                )
    if args.json:  # first: a reader of the output that stops early must not lose the results
        write_json(args.json, results)
    if set(args.servers) == {"in-process", "mlx_lm.server", "mlxtrio"}:
        print(report(results))
    else:
        print(json.dumps({key: value for key, value in results.items() if key in ("in_process", "mlx_lm.server", "mlxtrio")}, indent=1))


if __name__ == "__main__":
    main()
