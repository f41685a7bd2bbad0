"""How long a model takes to load through the admin API: a worker's start, import and load, end to end.

    python bench/worker_start.py [--model demo] [--models-dir DIR] [--loads 6] [--json OUT]

Each round loads the model (``POST /admin/load``, which answers once the
worker is ready), then unloads it: the time a request waits when its model
is not loaded, and after a worker crash before the next request is served.
Medians over ``--loads`` rounds, one server.
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

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import add_model_options, build_chosen  # noqa: E402
from server_process import mlxtrio_server  # noqa: E402


async def load_times(model_path: Path, loads: int) -> list[float]:
    times = []
    cache = Path(os.environ.get("MLX_CACHE_DIR", "/tmp/mlxtrio-bench-cache"))
    async with mlxtrio_server(cache, MLX_MODEL=str(model_path)) as server:
        async with httpx.AsyncClient(base_url=server.admin_url, timeout=600) as admin:
            model = str(model_path)  # as serve_bench asks for it: MLX_MODEL registers the path
            for _ in range(loads):
                started = time.perf_counter()
                response = await admin.post("/admin/load", json={"model": model})
                response.raise_for_status()
                times.append(time.perf_counter() - started)
                (await admin.post("/admin/unload", json={"model": model})).raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--loads", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    times = trio.run(load_times, build_chosen(args), args.loads)
    result = {
        "model": args.model,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_s": [round(value, 3) for value in times],
        "load_s_median": round(statistics.median(times), 3),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
