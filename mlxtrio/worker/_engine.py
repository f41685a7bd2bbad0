"""The engine contract: what the worker's loop drives, whatever decodes; and ``make_engine``, which picks one.

The worker's loop (``_main.py``) admits requests between steps, calls
``step()`` and sends one frame with every sequence's output, answers pings
with ``active`` and ``prompt_cache_bytes``, and exits when ``broken``. An
engine is anything with the members of ``Engine``:

- ``BatchEngine`` (``_batch.py``): continuous batching on mlx-lm's
  ``BatchGenerator``, a request alone decoded outside the batch until a
  second comes;
- ``SequentialEngine`` (``_sequential.py``): one ``generate_step`` per
  sequence, round robin, for models whose KV caches cannot be batched.

A new way of decoding (another library, a group of ranks) is a new module
with a class that has these members, and a case in ``make_engine``.
``_core.EngineCore`` holds what an engine may share with these two: the
admission of a request's choices, the prompt cache, sampling and output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._protocol import Generate, WorkerConfig
from ._batch import BatchEngine
from ._core import StepResult
from ._grammar import GrammarCompiler
from ._mlx_lm import can_batch
from ._sequential import SequentialEngine
from ._vision import ImagePreparer, Vision

if TYPE_CHECKING:
    from ._group import TokenShare

__all__ = ["Engine", "StepResult", "make_engine"]


@runtime_checkable
class Engine(Protocol):
    """Generation for one model, a step at a time, on the worker's only thread."""

    # "batched" or "sequential", as the worker reports it; the loop waits for announced followers only for "batched".
    kind: str
    # Grammars compile off the loop's thread; the loop admits a request once its grammar is compiled.
    grammars: GrammarCompiler
    # A vision model's images are decoded and processed off the loop's thread, as grammars compile (None: text only).
    images: ImagePreparer | None

    @property
    def tool_format(self) -> str | None:
        """The name of the model's tool-call format, None without tool calling."""

    @property
    def active(self) -> int:
        """How many sequences are running (or have output still to send): 0 when there is nothing to step."""

    @property
    def prompt_cache_bytes(self) -> int:
        """The bytes the prompt cache holds."""

    @property
    def broken(self) -> bool:
        """Whether generation keeps failing whatever runs: the worker exits to be started afresh."""

    def admit(self, request: Generate) -> int:
        """Start the request's sequences (one per choice); raises ``RequestError`` for one it cannot serve.
        Returns its (first) prompt's tokens."""

    def step(self) -> StepResult:
        """Advance every running sequence by a token (or a prefill chunk)."""

    def cancel(self, request_id: int) -> bool:
        """Stop one sequence; whether it was running."""

    def cancel_all(self) -> None:
        """Stop every sequence."""

    def settle(self) -> None:
        """Finish work left from the step whose frame has just gone out (caches of finished sequences)."""


def make_engine(
    model: Any,
    tokenizer: Any,
    config: WorkerConfig,
    *,
    context_length: int | None,
    first_tokens_always_early: bool,
    progress: Callable[[], None],
    vision: Vision | None = None,
    share: TokenShare | None = None,
) -> Engine:
    """The engine for ``model`` with the worker's settings: batched where its caches batch and
    ``config`` lets more than one sequence decode at once, else sequential.

    ``context_length``: the model's (None: unknown); ``first_tokens_always_early``: see
    ``BatchEngine``; ``progress``: called where the worker computes at length outside a step (the
    sequential engine's prefill chunks, an echoed prompt's log probabilities), so that it is no hang;
    ``vision``: a vision model's images (None: text only); ``share``: a worker group's (None: a worker of its own).
    """
    if config.decode_concurrency > 1 and can_batch(model):
        return BatchEngine(
            model,
            tokenizer,
            context_length=context_length,
            decode_concurrency=config.decode_concurrency,
            prefill_batch_size=config.prefill_batch_size,
            prefill_step_size=config.prefill_step_size,
            prompt_cache_bytes=config.prompt_cache_bytes,
            prefill_bucket=config.prefill_bucket,
            first_tokens_always_early=first_tokens_always_early,
            progress=progress,
            vision=vision,
            share=share,
        )
    return SequentialEngine(
        model,
        tokenizer,
        context_length=context_length,
        prefill_step_size=config.prefill_step_size,
        prompt_cache_bytes=config.prompt_cache_bytes,
        progress=progress,
        vision=vision,
        share=share,
    )
