"""Which malloc a worker runs with (Linux; elsewhere the system's).

MLX builds every step's graph on the host: array nodes, shared pointers,
vectors, allocated and freed by the thousand per token, by the Python thread
and MLX's own threads. glibc's malloc pays more for that than jemalloc,
which shows wherever decoding is bound by that host work: a single stream
on a GPU, and MLX's CPU backend (docs/PERFORMANCE.md). The worker is a
process of its own, so it can run with another malloc without touching the
orchestrator: the library is preloaded (``LD_PRELOAD``) into the worker's
environment when it starts. Its tokens do not change: a malloc hands out
memory, it does not change what is computed in it.

``worker_allocator`` (MLX_WORKER_ALLOCATOR):

- ``auto`` (default): jemalloc if the system has it (Debian and Ubuntu:
  ``apt install libjemalloc2``; Fedora: ``dnf install jemalloc``), else the
  C library's malloc; on macOS always the system's (its malloc is another
  design, and preloading is restricted there);
- ``system``: the C library's malloc;
- a path to a malloc library to preload (jemalloc, tcmalloc, mimalloc):
  Linux only, and the file must exist.

What the worker really runs with, whatever was asked, is read back from its
own memory map (``allocator_in_use``) and shown in ``/admin/status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import attrs

from ._libraries import LibrarySetting, library_in_use, parse_library_setting

__all__ = ["WorkerAllocator", "allocator_in_use", "parse_worker_allocator"]

# Malloc libraries a worker may be found running with; anything else is the C library's.
_KNOWN = {"libjemalloc": "jemalloc", "libtcmalloc": "tcmalloc", "libmimalloc": "mimalloc"}


@attrs.frozen
class WorkerAllocator(LibrarySetting):
    """A parsed ``worker_allocator`` setting (mode "auto", "system" or "path"); ``library()`` is the one to preload."""

    # Found by ldconfig's soname, which LD_PRELOAD resolves the way the linker resolves a dependency.
    AUTO: ClassVar[str] = "jemalloc"

    def environment(self, base: Mapping[str, str]) -> dict[str, str] | None:
        """The environment a worker starts with: ``base`` with the library preloaded; None: ``base`` as it is.

        An ``LD_PRELOAD`` already there (a profiler, the operator's own
        allocator) is kept, after ours: the first library to define malloc wins.
        """
        library = self.library()
        if library is None:
            return None
        already = base.get("LD_PRELOAD", "").split()
        if library in already:
            return None
        return {**base, "LD_PRELOAD": " ".join([library, *already])}


def parse_worker_allocator(value: str) -> WorkerAllocator:
    """``auto``, ``system`` or the path of a malloc library to preload (Linux); ValueError otherwise."""
    return WorkerAllocator(*parse_library_setting(value, setting="worker_allocator", default="system"))


def allocator_in_use(maps: str | None = None) -> str:
    """The malloc this process runs with: "jemalloc", "tcmalloc", "mimalloc" or "system".

    Read from ``/proc/self/maps`` (or ``maps``, its text): a preloaded malloc
    library is mapped into the process.
    """
    return library_in_use(_KNOWN, otherwise="system", maps=maps)
