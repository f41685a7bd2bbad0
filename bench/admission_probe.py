"""What one admission costs the worker, part by part, with and without this project's shortcuts.

    python bench/admission_probe.py --model demo [--models-dir DIR] [--bursts 60] [--rounds 3] [--max-tokens 16] [--json OUT]

The worker admits requests one after another on its only thread: in a
burst the last request waits for every admission before it, and a running
batch waits for each. This times, on the engine in-process, bursts of 8 of
serve_bench's chat prompts (rendered by the engine, as for the server's chat
requests, and hitting the prompt cache after the first burst, as at 8 streams
in serve_bench), admitted and then generated to the end (``--max-tokens``):

- ``admit``: the whole ``BatchEngine.admit``;
- ``prompt_tokens``: the chat template and the tokenizer (``_prompt_tokens``);
- ``cached_prefix``: the prompt cache's lookup and the copy of what it finds;

in three ways, by turns, ``--rounds`` times:

- ``transformers, deepcopy``: the tokenizer's own path (``apply_chat_template``
  with ``tokenize=True``, through transformers), and the prompt cache's
  finds copied with ``copy.deepcopy``, as mlx-lm does;
- ``direct, deepcopy``: ``PromptEncoder``'s direct path (the template
  rendered to text, the text given to the Rust backend's
  ``encode_batch_fast``);
- ``direct, copy_cache``: and the finds copied by ``copy_cache``, as the
  worker does.

It also times the
tokenizer's calls alone on one prompt: the whole ``apply_chat_template``, the
template rendered only, transformers' encoding of the rendered text, and the
backend's, with offsets (``encode``) and without (``encode_batch_fast``).
Medians in µs. Pin it as the worker is pinned (``taskset -c 1`` on a 2-core
machine), since the worker's admissions run on its one core.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import tokenizers
from bench_models import add_model_options, build_chosen, load_as_worker
from serve_bench import prompts

from mlxtrio import _protocol as p
from mlxtrio.worker import _prompt_cache
from mlxtrio.worker._engine import BatchEngine

WAYS = {"transformers, deepcopy": (False, False), "direct, deepcopy": (True, False), "direct, copy_cache": (True, True)}
# The worker's copy; the prompt cache calls whatever the module's ``copy_cache`` is.
_COPY_CACHE = _prompt_cache.copy_cache

PARTS = {"admit": "admit", "prompt_tokens": "_prompt_tokens", "cached_prefix": "_cached_prefix"}


def _median_us(values: list[float]) -> float:
    return round(statistics.median(values) * 1e6, 1)


def admissions(model, tokenizer, *, direct: bool, copy_cache: bool, bursts: int, max_tokens: int) -> dict:  # noqa: ANN001
    engine = BatchEngine(model, tokenizer, context_length=32768)
    if not direct:
        engine._encoder._fast = None  # noqa: SLF001 - the tokenizer's own path
    assert engine._encoder.direct == direct  # noqa: SLF001
    times: dict[str, list[float]] = defaultdict(list)
    for part, name in PARTS.items():
        original = getattr(engine, name)

        def timed(*args, _original=original, _part=part):  # noqa: ANN002, ANN202
            started = time.perf_counter()
            result = _original(*args)
            times[_part].append(time.perf_counter() - started)
            return result

        setattr(engine, name, timed)
    texts = [(p.ChatMessage("user", text),) for text in prompts(8)]
    params = p.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    request_id = 1
    _prompt_cache.copy_cache = _COPY_CACHE if copy_cache else copy.deepcopy
    try:
        for number in range(bursts + 2):
            if number == 2:  # the first two: cold, then the first hitting the prompt cache
                times.clear()
            for text in texts:
                engine.admit(p.Generate(request_id, params, text, None))
                request_id += 1
            while engine.active:
                engine.step()
            engine.settle()
    finally:
        _prompt_cache.copy_cache = _COPY_CACHE
    return {part: _median_us(values) for part, values in times.items()}


def tokenizer_calls(tokenizer, repeats: int = 400) -> dict:  # noqa: ANN001
    messages = [{"role": "user", "content": prompts(1)[0]}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    backend = tokenizer._tokenizer._tokenizer  # noqa: SLF001
    calls = {
        "apply_chat_template": lambda: tokenizer.apply_chat_template(messages, add_generation_prompt=True),
        "template_rendered_only": lambda: tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
        "transformers_encode_of_rendered": lambda: tokenizer._tokenizer(rendered, add_special_tokens=False)["input_ids"],  # noqa: SLF001
        # What an earlier direct path called (kept out, docs/PERFORMANCE.md): offsets and all.
        "backend_encode_with_offsets": lambda: backend.encode(rendered, add_special_tokens=False).ids,
        "backend_encode_of_rendered": lambda: backend.encode_batch_fast([rendered], add_special_tokens=False)[0].ids,
    }
    result = {}
    for name, call in calls.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        result[name] = _median_us(times)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--bursts", type=int, default=60, help="measured bursts of 8 per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request after each burst's admissions")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_as_worker(build_chosen(args))
    by_round: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way, (direct, copy_cache) in WAYS.items():
            by_round[way].append(
                admissions(model, tokenizer, direct=direct, copy_cache=copy_cache, bursts=args.bursts, max_tokens=args.max_tokens)
            )
    summary = {way: {part: statistics.median(run[part] for run in runs) for part in PARTS} for way, runs in by_round.items()}
    result = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "tokenizers_version": tokenizers.__version__,
        "admission_us_median_of_rounds": summary,
        "admission_us_by_round": by_round,
        "tokenizer_calls_us": tokenizer_calls(tokenizer),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("admission_us_median_of_rounds", "tokenizer_calls_us")}, indent=1))


if __name__ == "__main__":
    main()
