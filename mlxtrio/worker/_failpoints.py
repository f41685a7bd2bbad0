"""Failpoints: faults injected into a real worker on purpose, for the fault-injection tests.

Inert unless ``MLXTRIO_FAILPOINTS`` is set in the worker's environment (it
inherits the server's). The setting is a ``;``-separated list of
``point=action`` or ``point=action@N`` (only at the Nth time the point is
reached; without ``@N``, every time):

points
    ``load``   before the model loads;
    ``step``   before each generation step (the batched engine's step, or one
               sequence's token on the sequential engine);
    ``send``   before each message to the orchestrator;
    ``settle`` before the caches of sequences that finished are computed;
    ``embed``  before each forward pass of an embedding model.
actions
    ``error``  raise a RuntimeError;
    ``oom``    raise MLX's own out-of-memory error (its exact message);
    ``hang``   block forever, as a wedged kernel would;
    ``crash``  die by SIGSEGV, as a native crash (and MLX's CPU out-of-memory) does;
    ``corrupt`` (``send`` only) write a frame that is not a message.

A failpoint is how a test gets the same fault at the same place every time;
signals from outside (SIGKILL, SIGSTOP) cover the rest.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

__all__ = ["FailpointError", "failpoint", "parse"]

ENVIRONMENT_VARIABLE = "MLXTRIO_FAILPOINTS"
_POINTS = {"load", "step", "send", "settle", "embed"}
_ACTIONS = {"error", "oom", "hang", "crash", "corrupt"}
# mlx/allocator.cpp: what MLX raises when an allocation fails.
OOM_MESSAGE = "[malloc] Unable to allocate 1099511627776 bytes."


class FailpointError(RuntimeError):
    """The injected error (``error`` action)."""


def parse(setting: str) -> dict[str, tuple[str, int | None]]:
    points: dict[str, tuple[str, int | None]] = {}
    for item in filter(None, (part.strip() for part in setting.split(";"))):
        point, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        if point not in _POINTS or action not in _ACTIONS or (action == "corrupt") != (point == "send"):
            raise ValueError(f"{ENVIRONMENT_VARIABLE}: cannot use {item!r}")
        points[point] = (action, int(nth) if nth else None)
    return points


_armed = parse(os.environ.get(ENVIRONMENT_VARIABLE, ""))
_hits: Counter[str] = Counter()


def failpoint(point: str) -> str | None:
    """Fire ``point`` if armed. Returns ``"corrupt"`` for the caller to act on; raises or never returns otherwise."""
    if not _armed:
        return None
    armed = _armed.get(point)
    if armed is None:
        return None
    action, nth = armed
    _hits[point] += 1
    if nth is not None and _hits[point] != nth:
        return None
    if action == "error":
        raise FailpointError(f"failpoint {point}: injected error")
    if action == "oom":
        raise RuntimeError(OOM_MESSAGE)
    if action == "hang":
        threading.Event().wait()
    if action == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    return action
