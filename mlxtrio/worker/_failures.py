"""What an engine does when generation fails under its requests.

- The failure becomes the request's ``RequestError``: ``OUT_OF_MEMORY`` when
  MLX says an allocation failed (MLX's cache is given back first),
  ``INTERNAL`` otherwise (``generation_failure``).
- A sequence that has sent nothing yet starts again, once, from a fresh
  state, instead of failing with the step (``RetryOnce``): a prompt that
  fails twice is the likely cause, and fails.
- Three strikes: an engine whose generation fails ``MAX_CONSECUTIVE_FAILURES``
  times in a row, with no good step between, is in a state no request can
  fix; it says it is ``broken``, and the worker exits to be started afresh.
"""

from __future__ import annotations

import mlx.core as mx

from .._protocol import ErrorKind

__all__ = ["MAX_CONSECUTIVE_FAILURES", "FailurePolicy", "RequestError", "RetryOnce", "generation_failure"]

MAX_CONSECUTIVE_FAILURES = 3
# How MLX says an allocation failed: mlx/allocator.cpp ("[malloc] Unable to
# allocate"), the Metal and CUDA allocators, and Metal's command buffer errors.
_OUT_OF_MEMORY = ("unable to allocate", "out of memory", "insufficient memory", "[metal::malloc]", "resource limit")


class RequestError(Exception):
    """A request the model cannot serve, and why, as the protocol's ``ErrorKind``."""

    def __init__(self, kind: ErrorKind, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.param = param
        self.code = code


def generation_failure(exc: Exception) -> RequestError:
    """The error a request gets when generation fails under it: out of memory, or internal."""
    if isinstance(exc, MemoryError) or any(marker in str(exc).lower() for marker in _OUT_OF_MEMORY):
        # Give what MLX holds in its cache back before anything else runs.
        mx.clear_cache()
        return RequestError(ErrorKind.OUT_OF_MEMORY, f"generation ran out of memory: {exc}")
    return RequestError(ErrorKind.INTERNAL, f"generation failed: {type(exc).__name__}: {exc}")


class FailurePolicy:
    """The strikes an engine counts: each failure is one, a good step clears them (``_consecutive_failures = 0``)."""

    def __init__(self) -> None:
        self._consecutive_failures = 0
        self._most_failures = MAX_CONSECUTIVE_FAILURES

    @property
    def broken(self) -> bool:
        """Whether generation keeps failing whatever runs: time for a fresh process."""
        return self._consecutive_failures >= self._most_failures

    def fail_at_first(self) -> None:
        """Broken at the first failure: a worker group's (its ranks cannot recover apart, see _group/_rank.py)."""
        self._most_failures = 1

    def _failed(self, exc: Exception) -> RequestError:
        self._consecutive_failures += 1
        return generation_failure(exc)


class RetryOnce:
    """The requests started again after a failure: each may be once, and only while it has sent nothing."""

    def __init__(self) -> None:
        self._retried: set[int] = set()

    def allows(self, request_id: int, *, sent: bool) -> bool:
        return not sent and request_id not in self._retried

    def mark(self, request_id: int) -> None:
        self._retried.add(request_id)

    def forget(self, request_id: int) -> None:
        self._retried.discard(request_id)

    def clear(self) -> None:
        self._retried.clear()
