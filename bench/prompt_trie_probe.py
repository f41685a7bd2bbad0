"""What a prompt-cache lookup costs when the prompt is a prefix of a longer cached sequence.

    python bench/prompt_trie_probe.py [--prompt 100] [--extensions 128 1000 4000 16000] [--repeats 5] [--json OUT]

The worker looks every admitted prompt up in its prompt cache, on its one
thread, between decode steps. When a cached sequence extends the prompt (the
same prompt sent again, a prompt that is a prefix of a longer cached
conversation), mlx-lm's ``PromptTrie.search`` looks for the shortest such
extension. This times that search, mlx-lm's and the worker's
(mlxtrio/worker/_prompt_cache.py), for a prompt of ``--prompt`` tokens below
one cached sequence longer by each of ``--extensions`` tokens, and checks
that both find the same sequence. Median of ``--repeats``, in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from mlx_lm.models.cache import PromptTrie as MlxLmPromptTrie

    from mlxtrio.worker._prompt_cache import PromptTrie

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=100)
    parser.add_argument("--extensions", type=int, nargs="+", default=[128, 1000, 4000, 16000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for extension in args.extensions:
        tokens = list(range(args.prompt + extension))
        row: dict[str, float | int] = {"extension_tokens": extension}
        found = []
        for name, trie_class in (("mlx_lm", MlxLmPromptTrie), ("mlxtrio", PromptTrie)):
            trie = trie_class()
            trie.add("m", tokens, "cached")
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = trie.search("m", tokens[: args.prompt])
                times.append(time.perf_counter() - started)
            found.append(result)
            row[f"{name}_ms"] = round(statistics.median(times) * 1e3, 3)
        if found[0] != found[1]:
            raise SystemExit(f"the two searches disagree at an extension of {extension} tokens")
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"prompt_tokens": args.prompt, "repeats": args.repeats, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
