"""Engines on the demo model as the worker makes them, and the requests the tests give them.

``demo_engine`` gives an engine the worker's settings (as the catalog makes
them from ``Config``'s defaults, the one place they are written) except
those a test names; the engines themselves take every setting explicitly.
"""

from __future__ import annotations

from typing import Any, TypeVar

from mlxtrio import Config
from mlxtrio import _protocol as p
from mlxtrio.orchestrator import ModelCatalog, ModelEntry
from mlxtrio.worker._batch import BatchEngine

E = TypeVar("E")

# The demo model's context.
CONTEXT_LENGTH = 4096
# The worker's settings as the orchestrator sends them by default.
WORKER = ModelCatalog(Config.from_environment(env={})).worker_config(ModelEntry("demo", "demo", "", ""))
GREEDY = p.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
# A request id no test gives a request of its own.
_MOVER = 1 << 40


def demo_engine(kind: type[E], demo: tuple[Any, Any], **options: Any) -> E:
    """A ``kind`` (``BatchEngine`` or ``SequentialEngine``) on ``demo``'s model and tokenizer."""
    model, tokenizer = demo
    settings: dict[str, Any] = {
        "context_length": CONTEXT_LENGTH,
        "prefill_step_size": WORKER.prefill_step_size,
        "prompt_cache_bytes": WORKER.prompt_cache_bytes,
        "progress": lambda: None,
    }
    if kind is BatchEngine:
        settings.update(
            decode_concurrency=WORKER.decode_concurrency,
            prefill_batch_size=WORKER.prefill_batch_size,
            prefill_bucket=WORKER.prefill_bucket,
            first_tokens_always_early=False,
        )
    return kind(model, tokenizer, **{**settings, **options})


def admit_batched(engine: BatchEngine, request: p.Generate) -> None:
    """Admit ``request`` to be decoded in the batch from its start, as the first request of a burst is.

    A request that finds the engine idle is decoded alone until a second one
    comes; a second that comes before the first step moves it into the batch
    as a prompt. That second one is cancelled at once.
    """
    engine.admit(request)
    engine.admit(generate(_MOVER, "x"))
    engine.cancel(_MOVER)


def generate(request_id: int, prompt: str, params: p.SamplingParams = GREEDY) -> p.Generate:
    return p.Generate(request_id, params, None, prompt)


def run(engine, until_done: set[int]) -> tuple[dict[int, str], dict[int, p.ErrorKind]]:  # noqa: ANN001
    """Step until the given requests end; their texts, and the error kinds of those that failed."""
    texts: dict[int, str] = {}
    failed: dict[int, p.ErrorKind] = {}
    for _ in range(1000):
        deltas, failures = engine.step()
        for delta in deltas:
            texts[delta.request_id] = texts.get(delta.request_id, "") + delta.text
            if delta.finish_reason is not None:
                until_done.discard(delta.request_id)
        for request_id, error in failures:
            failed[request_id] = error.kind
            until_done.discard(request_id)
        if not until_done:
            return texts, failed
    raise AssertionError("the engine never finished")
