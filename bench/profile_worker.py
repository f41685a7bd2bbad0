"""Where a serving worker's time goes during one long stream: py-spy on the real worker.

    python bench/profile_worker.py --model qwen2.5-0.5b-bf16 [--models-dir DIR] [--seconds 5] [--out DIR]

Starts ``mlxtrio serve`` on a bench model (bench/bench_models.py), warms it
with one short request, streams one long greedy chat completion unprofiled,
then streams more, one after another, and while they run samples the worker
process with ``py-spy record`` (which must be on PATH; it needs ptrace, so
root or CAP_SYS_PTRACE). Writes the raw collapsed stacks to
OUT/worker-stacks.txt and prints the decode rate with and without the
profiler attached, and each stream's token count (py-spy samples from
outside, but each sample stops the process for a moment), and the top
frames by share of samples, so that a gap between the server and in-process
mlx-lm can be found in the process that owns MLX rather than guessed at.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import httpx
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_models import add_model_options, build_chosen  # noqa: E402
from serve_bench import _stream_one, prompts  # noqa: E402
from sse_client import HttpxClient  # noqa: E402
from server_process import mlxtrio_server  # noqa: E402


def summarise(stacks: Path, top: int = 25) -> dict:
    """Share of samples per innermost frame, and per frame anywhere on the stack (inclusive)."""
    own: collections.Counter = collections.Counter()
    anywhere: collections.Counter = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            anywhere[frame] += int(count)
    return {
        "samples": total,
        "self": [(frame, round(count / total, 3)) for frame, count in own.most_common(top)],
        "inclusive": [(frame, round(count / total, 3)) for frame, count in anywhere.most_common(top)],
    }


async def profile(model_path: Path, seconds: int, out: Path, tokens: int) -> dict:
    async with mlxtrio_server(out / "cache", MLX_MODEL=str(model_path)) as server:
        async with httpx.AsyncClient(timeout=600) as http:
            client = HttpxClient(http)
            # The model by its path, as serve_bench asks for it: /v1/models lists the demo model first.
            model = str(model_path)
            warm = await _stream_one(client, server.openai_url, model, prompts(1)[0], 32)
            status = (await http.get(server.admin_url + "/admin/status")).json()
            pid = next(worker["pid"] for worker in status["workers"] if worker["pid"])
            plain = await _stream_one(client, server.openai_url, model, prompts(2)[1], tokens)
            # Streams one after another for as long as py-spy samples: a
            # random-weight model may end a stream early (a special token can
            # win greedy decoding), and a profile must not outlast its stream.
            profiled: list = []
            spying = trio.Event()

            async def streams() -> None:
                index = 2
                while not spying.is_set():
                    profiled.append(await _stream_one(client, server.openai_url, model, prompts(index + 1)[index], tokens))
                    index += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(streams)
                await trio.sleep(1.0)  # past the first prefill, into the decode
                spy = await trio.run_process(
                    ["py-spy", "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw",
                     "-o", str(out / "worker-stacks.txt"), "--nonblocking"],
                    capture_stderr=True, check=False,
                )
                spying.set()
    return {
        "model": model_path.name,
        "warm_ttft_s": warm.ttft,
        "decode_tps_unprofiled": (plain.tokens - 1) / plain.span,
        "tokens_unprofiled": plain.tokens,
        "decode_tps_while_profiled": sum(o.tokens - 1 for o in profiled) / sum(o.span for o in profiled),
        "streams_while_profiled": [o.tokens for o in profiled],
        "py_spy_rc": spy.returncode,
        "py_spy_stderr": spy.stderr.decode(errors="replace")[-2000:],
        "stacks": summarise(out / "worker-stacks.txt") if (out / "worker-stacks.txt").exists() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=2000, help="long enough to outlast the profile")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mlxtrio-profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = build_chosen(args)
    started = time.perf_counter()
    result = trio.run(profile, model_path, args.seconds, args.out, args.tokens)
    result["wall_s"] = time.perf_counter() - started
    print(json.dumps(result, indent=1))
    (args.out / "profile.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
