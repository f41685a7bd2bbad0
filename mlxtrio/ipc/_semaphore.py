"""The one place where Linux and macOS differ: waiting on a semaphore with a timeout.

Linux has ``sem_timedwait``; posix_ipc exposes it as ``acquire(timeout)`` and
releases the GIL while it blocks. macOS has no timed wait at all (posix_ipc's
``acquire(timeout > 0)`` would block forever there), so on macOS a timed wait
is emulated by ``sem_trywait`` with short, growing sleeps: at most
``_MAC_MAX_BACKOFF`` of added latency, and no thread ever blocked beyond the
caller's timeout. Everything above this module sees one function.
"""

from __future__ import annotations

import time

import posix_ipc

__all__ = ["HAS_TIMED_WAIT", "try_acquire", "acquire_within"]

HAS_TIMED_WAIT: bool = bool(posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED)

_MAC_MIN_BACKOFF = 20e-6
_MAC_MAX_BACKOFF = 1e-3


def try_acquire(sem: posix_ipc.Semaphore) -> bool:
    """Take one unit if one is available, without blocking."""
    try:
        sem.acquire(0)
    except posix_ipc.BusyError:
        return False
    return True


def _acquire_within_timed(sem: posix_ipc.Semaphore, timeout: float) -> bool:
    try:
        sem.acquire(timeout)
    except posix_ipc.BusyError:
        return False
    return True


def _acquire_within_polled(sem: posix_ipc.Semaphore, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    backoff = _MAC_MIN_BACKOFF
    while True:
        if try_acquire(sem):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(backoff, remaining))
        backoff = min(backoff * 2, _MAC_MAX_BACKOFF)


def acquire_within(sem: posix_ipc.Semaphore, timeout: float) -> bool:
    """Take one unit, waiting at most ``timeout`` seconds; False if none came."""
    if timeout <= 0:
        return try_acquire(sem)
    if HAS_TIMED_WAIT:
        return _acquire_within_timed(sem, timeout)
    return _acquire_within_polled(sem, timeout)
