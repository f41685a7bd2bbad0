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
  keeps the whole machine. "Its own" is machine-wide: a core that another
  mlxtrio worker (this server's or another's) is pinned to is passed over,
  and when every core is held the worker runs unpinned rather than share one
  at half speed (``choose_core``);
- ``none``: no pinning;
- a CPU list such as ``2,3`` or ``4-7``: every worker on those CPUs, whatever
  the backend.

What other workers hold is read from ``/proc`` as the worker chooses
(``other_workers_cpus``): the affinity of every live process started as
``python -m mlxtrio.worker``. Nothing is claimed or stored, so a server
killed with SIGKILL holds nothing once its worker is gone (a worker exits
with its orchestrator). Two workers choosing at the same moment take turns
under ``choosing_cpus``, an flock the kernel drops with a dead holder. On
macOS there is no affinity API: nothing is pinned, read or locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import attrs

T = TypeVar("T")

__all__ = [
    "WorkerCpus",
    "allowed_cpus",
    "batch_this_process",
    "choose_core",
    "choosing_cpus",
    "held_cpus",
    "other_workers_cpus",
    "parse_worker_cpus",
    "pin_this_process",
    "scheduling_policy",
]

# How the orchestrator starts a worker (orchestrator/_process.py): what marks one in /proc/<pid>/cmdline.
_WORKER_ARGUMENTS = [b"-m", b"mlxtrio.worker"]
# A worker waits this long at most for another to finish choosing, then chooses without the lock.
_CHOOSING_WAIT = 5.0


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


def _cpu_list(text: str) -> set[int]:
    """The CPUs of a list such as ``0-3,6`` (Linux's own notation); ValueError if it is not one."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        low, high = int(first), int(last or first)
        if low < 0 or high < low:
            raise ValueError(text)
        cpus.update(range(low, high + 1))
    return cpus


def parse_worker_cpus(value: str) -> WorkerCpus:
    """``auto``, ``none`` or a CPU list (``0-3,6``) of CPUs this process may use; ValueError otherwise."""
    text = value.strip().lower()
    if text in {"auto", "none"}:
        return WorkerCpus(text)
    try:
        cpus = _cpu_list(text)
    except ValueError:
        raise ValueError(f"worker_cpus must be 'auto', 'none' or a CPU list like '0-3,6', not {value!r}") from None
    allowed = allowed_cpus()
    if allowed and not cpus <= set(allowed):
        raise ValueError(
            f"worker_cpus names CPUs this process may not use: {sorted(cpus - set(allowed))} "
            f"(allowed: {','.join(map(str, allowed))})"
        )
    return WorkerCpus("list", tuple(sorted(cpus)))


def other_workers_cpus() -> dict[int, frozenset[int]]:
    """The CPUs every other live mlxtrio worker on this machine may run on, by pid (anyone's); {} but on Linux."""
    if not sys.platform.startswith("linux"):
        return {}
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                if file.read().split(b"\0")[1:3] != _WORKER_ARGUMENTS:
                    continue
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as file:
                fields = dict(line.partition(":")[::2] for line in file)
            # A zombie's affinity is its last, but it runs nowhere.
            if fields.get("State", "").strip().startswith(("Z", "X")):
                continue
            found[int(entry)] = frozenset(_cpu_list(fields["Cpus_allowed_list"].strip()))
        except (OSError, KeyError, ValueError):
            continue  # gone meanwhile, or not readable: it holds nothing we can know of
    return found


def held_cpus(others: Iterable[frozenset[int]], allowed: tuple[int, ...]) -> set[int]:
    """The CPUs that other workers hold: a worker held to fewer CPUs than ``allowed`` holds those; one allowed them all, none."""
    every = set(allowed)
    return set().union(*(cpus for cpus in others if not every <= cpus))


def choose_core(preferred: int, allowed: tuple[int, ...], held: set[int]) -> int | None:
    """The first core of ``allowed`` from ``preferred`` down (round to the last) that is not ``held``; None if all are."""
    if not allowed:
        return None
    start = allowed.index(preferred) if preferred in allowed else len(allowed) - 1
    order = [allowed[(start - step) % len(allowed)] for step in range(len(allowed))]
    return next((cpu for cpu in order if cpu not in held), None)


@contextlib.contextmanager
def choosing_cpus() -> Iterator[None]:
    """Held by a worker from reading what others hold until it is pinned: two choosing at once take turns.

    An flock on a file of this user's (owner-only, never through a symlink),
    which the kernel releases when its holder dies, SIGKILL included. A lock
    that cannot be had (a file not ours, a holder stuck past ``_CHOOSING_WAIT``)
    costs only the turn-taking: the worker chooses without it.
    """
    directory = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(directory, f"mlxtrio-{os.geteuid()}-cpus.lock")
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        info = os.fstat(descriptor)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            if info.st_mode & 0o077:
                os.fchmod(descriptor, 0o600)
            _lock(descriptor)  # released with the descriptor
        yield
    finally:
        os.close(descriptor)


def _lock(descriptor: int) -> None:
    """An exclusive flock on ``descriptor``, unless another holds it for ``_CHOOSING_WAIT``."""
    deadline = time.monotonic() + _CHOOSING_WAIT
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


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
