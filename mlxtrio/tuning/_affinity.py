"""Which CPUs a worker runs on (Linux; elsewhere nothing is pinned).

On MLX's CPU backend the worker's Python thread hands every evaluation to
MLX's scheduler thread and waits for it: two threads taking turns, never
working at once. When they sit on different cores each turn is a cross-core
wake-up, which on a virtual machine goes through the hypervisor; on one core
they hand over without one (docs/PERFORMANCE.md). It costs nothing there,
since the CPU backend's matrix work is single-threaded too.

A worker pinned to a single core also runs its threads under Linux's
``SCHED_BATCH`` policy (``batch_this_process``). Under the default policy a
thread that wakes another on its own core is usually preempted by it at once
(wake-up preemption): the Python thread queues an operation for MLX's
thread, is switched out while MLX runs it, is switched back in to queue the
next, and so on. ``SCHED_BATCH`` is the same fair share with no wake-up
preemption for its threads: MLX's thread runs when the Python thread waits,
with all the work queued by then, so a step costs a few context switches
instead of one per operation (docs/PERFORMANCE.md). A worker on more than
one core is left as it is: its two threads then sit on different cores and
do not preempt each other. The orchestrator keeps the default policy, so a
worker woken by a request does not preempt it either.

``worker_cpus`` (MLX_WORKER_CPUS):

- ``auto`` (default): each model's worker on one core of its own, from the
  last allowed core down, but only when MLX runs on the CPU: a GPU backend
  keeps the whole machine;
- ``none``: no pinning;
- a CPU list such as ``2,3`` or ``4-7``: every worker on those CPUs, whatever
  the backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import attrs

T = TypeVar("T")

__all__ = ["WorkerCpus", "allowed_cpus", "batch_this_process", "parse_worker_cpus", "pin_this_process", "scheduling_policy"]


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on; () where the platform cannot say (macOS)."""
    getter = getattr(os, "sched_getaffinity", None)
    return tuple(sorted(getter(0))) if getter is not None else ()


@attrs.frozen
class WorkerCpus:
    """A parsed ``worker_cpus`` setting."""

    mode: str  # "auto", "none" or "list"
    cpus: tuple[int, ...] = ()

    def __str__(self) -> str:
        """The setting as it would be written: ``auto``, ``none`` or a CPU list such as ``0-3,6``."""
        if self.mode != "list":
            return self.mode
        runs: list[list[int]] = []
        for cpu in self.cpus:
            if runs and runs[-1][1] == cpu - 1:
                runs[-1][1] = cpu
            else:
                runs.append([cpu, cpu])
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)

    def for_worker(self, slot: int) -> tuple[tuple[int, ...], bool]:
        """(CPUs, whether only on the CPU backend) for the ``slot``-th model's worker; () for none."""
        if self.mode == "list":
            return self.cpus, False
        allowed = allowed_cpus()
        if self.mode == "none" or not allowed:
            return (), False
        return (allowed[-1 - slot % len(allowed)],), True


def parse_worker_cpus(value: str) -> WorkerCpus:
    """``auto``, ``none`` or a CPU list (``0-3,6``) of CPUs this process may use; ValueError otherwise."""
    text = value.strip().lower()
    if text in {"auto", "none"}:
        return WorkerCpus(text)
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if low < 0 or high < low:
                raise ValueError
            cpus.update(range(low, high + 1))
    except ValueError:
        raise ValueError(f"worker_cpus must be 'auto', 'none' or a CPU list like '0-3,6', not {value!r}") from None
    allowed = allowed_cpus()
    if allowed and not cpus <= set(allowed):
        raise ValueError(
            f"worker_cpus names CPUs this process may not use: {sorted(cpus - set(allowed))} "
            f"(allowed: {','.join(map(str, allowed))})"
        )
    return WorkerCpus("list", tuple(sorted(cpus)))


def pin_this_process(cpus: tuple[int, ...]) -> bool:
    """Every thread of this process onto ``cpus`` (threads started later inherit it); False if unsupported."""
    setter = getattr(os, "sched_setaffinity", None)
    if setter is None or not cpus:
        return False
    # sched_setaffinity applies to one thread: MLX's threads already exist.
    _each_thread(lambda thread: setter(thread, cpus))
    return True


def batch_this_process() -> bool:
    """Every thread of this process under ``SCHED_BATCH`` (threads started later inherit it); False if unsupported.

    Unprivileged: it only gives up wake-up preemption, at the same priority
    (see the module's docstring).
    """
    setter = getattr(os, "sched_setscheduler", None)
    batch = getattr(os, "SCHED_BATCH", None)
    if setter is None or batch is None:
        return False
    _each_thread(lambda thread: setter(thread, batch, os.sched_param(0)))
    return True


_POLICY_LABELS = (
    ("SCHED_OTHER", "normal"),
    ("SCHED_BATCH", "batch"),
    ("SCHED_IDLE", "idle"),
    ("SCHED_FIFO", "fifo"),
    ("SCHED_RR", "rr"),
)
_POLICY_NAMES = {getattr(os, name): label for name, label in _POLICY_LABELS if hasattr(os, name)}


def scheduling_policy() -> str:
    """The policy every thread of this process runs under (``normal``, ``batch``, ...); ``mixed`` if they differ.

    ``unknown`` where the platform cannot say (macOS).
    """
    getter = getattr(os, "sched_getscheduler", None)
    if getter is None:
        return "unknown"
    policies = {_POLICY_NAMES.get(policy, "other") for policy in _each_thread(getter)}
    return policies.pop() if len(policies) == 1 else "mixed"


def _each_thread(action: Callable[[int], T]) -> list[T]:
    """``action(thread id)`` for every thread of this process (Linux), skipping threads that end meanwhile."""
    results = []
    for task in os.listdir("/proc/self/task"):
        try:
            results.append(action(int(task)))
        except ProcessLookupError:
            pass
    return results
