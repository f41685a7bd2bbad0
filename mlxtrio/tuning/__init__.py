"""Host tuning for workers: CPU pinning, the malloc and the BLAS a worker runs with.

The server's configuration parses the settings (``parse_worker_*``) once,
the orchestrator hands each worker what they mean for it, and the worker
applies that before MLX is imported. Nothing here
imports MLX.
"""

from ._affinity import (
    WorkerCpus,
    allowed_cpus,
    batch_this_process,
    choose_core,
    choosing_cpus,
    held_cpus,
    other_workers_cpus,
    parse_worker_cpus,
    pin_this_process,
    scheduling_policy,
)
from ._allocator import WorkerAllocator, allocator_in_use, parse_worker_allocator
from ._blas import WorkerBlas, blas_in_use, load_worker_blas, parse_worker_blas
from ._libraries import find_system_library

__all__ = [
    "WorkerAllocator",
    "WorkerBlas",
    "WorkerCpus",
    "allocator_in_use",
    "allowed_cpus",
    "batch_this_process",
    "blas_in_use",
    "choose_core",
    "choosing_cpus",
    "find_system_library",
    "held_cpus",
    "load_worker_blas",
    "other_workers_cpus",
    "parse_worker_allocator",
    "parse_worker_blas",
    "parse_worker_cpus",
    "pin_this_process",
    "scheduling_policy",
]
