"""Which BLAS a worker's MLX runs its float32 matrix products with (Linux; elsewhere MLX's own).

MLX's Linux wheels for the CPU (``mlx[cpu]``) link the reference BLAS of
netlib, bundled in the wheel: correct, but plain loops, many times slower
than OpenBLAS on a decode step's float32 products and more so on a prefill
chunk's (docs/PERFORMANCE.md). MLX calls the standard CBLAS entry points
(``cblas_sgemm``), so a BLAS loaded into the process's global symbol scope
before MLX's own library is the one MLX's calls reach: the worker loads it
with ``RTLD_GLOBAL`` before it imports MLX (``load_worker_blas``). Only the worker does this, and only
float32 products go through a BLAS: MLX computes half-precision and
quantized products with kernels of its own, which this does not change. On
macOS MLX uses Accelerate, and nothing is loaded.

``worker_blas`` (MLX_WORKER_BLAS):

- ``auto`` (default): OpenBLAS if the system has it (Debian and Ubuntu:
  ``apt install libopenblas0``; Fedora: ``dnf install openblas``), else the
  BLAS MLX was built with; on macOS always MLX's;
- ``mlx``: the BLAS MLX was built with;
- a path to a CBLAS library to load (OpenBLAS, BLIS, MKL): Linux only, and
  the file must exist.

A worker pinned to CPUs (``MLX_WORKER_CPUS``) sets ``OPENBLAS_NUM_THREADS``
to their number, so that OpenBLAS does not spread over cores the
orchestrator and other workers run on, unless the server's environment sets
a thread count (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ...) itself.
What the worker really runs with is read back from its own memory map
(``blas_in_use``) and shown in ``/admin/status``.
"""

from __future__ import annotations

import os
import sys
from typing import ClassVar

import attrs

from ._libraries import LibrarySetting, library_in_use, parse_library_setting

__all__ = ["WorkerBlas", "blas_in_use", "load_worker_blas", "parse_worker_blas"]

# BLAS libraries a worker may be found running with; anything else is the one MLX was built with.
_KNOWN = {"libopenblas": "openblas", "libblis": "blis", "libmkl_rt": "mkl"}
# Thread counts an operator may have set; any of them is left as it is.
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "BLIS_NUM_THREADS", "MKL_NUM_THREADS")


@attrs.frozen
class WorkerBlas(LibrarySetting):
    """A parsed ``worker_blas`` setting (mode "auto", "mlx" or "path"); ``library()`` is the one to load before MLX."""

    AUTO: ClassVar[str] = "openblas"


def parse_worker_blas(value: str) -> WorkerBlas:
    """``auto``, ``mlx`` or the path of a CBLAS library (Linux); ValueError otherwise."""
    return WorkerBlas(*parse_library_setting(value, setting="worker_blas", default="mlx"))


def load_worker_blas(library: str | None, *, cpus: tuple[int, ...]) -> None:
    """In the worker, before MLX is imported: load ``library`` (None: none) into the global symbol scope.

    The orchestrator resolves the setting (``WorkerBlas.library``), once.
    ``cpus``: the CPUs the worker is to be pinned to (empty: not pinned),
    the BLAS's thread count unless the environment sets one. A library that
    does not load leaves MLX's BLAS, with a line on stderr: it is a speed-up,
    not a condition of serving.
    """
    if library is None:
        return
    if "mlx.core" in sys.modules:
        # Too late to come first: say so rather than pretend.
        print(f"mlxtrio worker: MLX was imported before the BLAS {library!r} was loaded; not loading it", file=sys.stderr)
        return
    if cpus and not any(variable in os.environ for variable in _THREAD_VARIABLES):
        # Read once, when the library initialises.
        os.environ["OPENBLAS_NUM_THREADS"] = str(len(cpus))
    import ctypes

    try:
        ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        print(f"mlxtrio worker: could not load the BLAS {library!r}: {exc}; using MLX's own", file=sys.stderr)


def blas_in_use(maps: str | None = None) -> str:
    """The BLAS this process runs with: "openblas", "blis", "mkl" or "mlx" (the one MLX was built with).

    Read from ``/proc/self/maps`` (or ``maps``, its text): a loaded library
    is mapped into the process.
    """
    return library_in_use(_KNOWN, otherwise="mlx", maps=maps)
