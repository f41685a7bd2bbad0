"""What happens to a worker process, as the model's state machine (``_lifecycle.py``) hears of it.

The process side (``_process.py``) turns spawning, the worker's messages and
its exit into these small values; the state machine consumes them and does no
I/O. The worker's own messages (``_protocol``'s ``Ready``, ``LoadFailed``,
``Step`` ...) are reported as they are: frozen values already.
"""

from __future__ import annotations

import attrs

from .. import _protocol as p

__all__ = ["Exited", "ProcessEvent", "StartFailed", "Started"]


@attrs.frozen
class Started:
    """A worker process runs, loading its model."""

    pid: int


@attrs.frozen
class StartFailed:
    """No worker process could be started."""

    reason: str


@attrs.frozen
class Exited:
    """The worker process is gone and reaped.

    ``cause`` and ``reason`` say why as far as the process side knows: the
    cause the orchestrator killed it for ("hang", "protocol"), else what its
    exit status says ("crash", "generation", "protocol"). Whether that was a
    crash at all, or a stop the orchestrator asked for, is the state
    machine's to say.
    """

    pid: int
    returncode: int
    cause: str
    reason: str


ProcessEvent = Started | StartFailed | Exited | p.ToOrchestrator
