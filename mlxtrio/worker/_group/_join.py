"""Joining mlx.distributed as one rank of a group, from the GroupConfig alone.

The orchestrator sets no MLX_* variable and copies no file to any host:
each rank writes what its backend reads (the ring's hostfile, the RDMA
device matrix) into a private temporary file, sets the variables, and
initialises the backend strictly (a backend that cannot start is an error,
not a silent group of one).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..._protocol import GroupConfig

__all__ = ["devices_before_mlx", "join"]


def devices_before_mlx(group: GroupConfig, rank: int) -> None:
    """Before MLX is imported: on CUDA, ranks sharing a host each take their own GPU (as ``mlx.launch`` does)."""
    if group.backend == "nccl" and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(group.hosts[:rank].count(group.hosts[rank]))


@contextmanager
def _private_file(content: str) -> Iterator[str]:
    descriptor, path = tempfile.mkstemp(prefix="mlxtrio-group-")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(content)
        yield path
    finally:
        os.unlink(path)


def _environment(group: GroupConfig, rank: int) -> tuple[dict[str, str], dict[str, str]]:
    """(variables, variables naming a file with this content) for ``group.backend``."""
    size = len(group.hosts)
    if group.backend == "ring":
        hosts = [[f"{host}:{port}"] for host, port in zip(group.hosts, group.ports)]
        return {"MLX_RANK": str(rank)}, {"MLX_HOSTFILE": json.dumps(hosts)}
    if group.backend == "nccl":
        variables = {"MLX_RANK": str(rank), "MLX_WORLD_SIZE": str(size), "NCCL_HOST_IP": group.hosts[0], "NCCL_PORT": str(group.ports[0])}
        return variables, {}
    if group.backend == "jaccl":
        variables = {"MLX_RANK": str(rank), "MLX_JACCL_COORDINATOR": f"{group.hosts[0]}:{group.ports[0]}"}
        return variables, {"MLX_IBV_DEVICES": json.dumps([list(row) for row in group.rdma])}
    raise ValueError(f"unknown mlx.distributed backend {group.backend!r}")


def join(group: GroupConfig, rank: int) -> Any:
    """This process as rank ``rank`` of ``group``: mlx.distributed's group of all the ranks."""
    import mlx.core as mx

    variables, files = _environment(group, rank)
    os.environ.update(variables)
    with _join_files(files):
        world = mx.distributed.init(backend=group.backend, strict=True)
    if world.size() != len(group.hosts) or world.rank() != rank:
        raise RuntimeError(f"mlx.distributed formed rank {world.rank()} of {world.size()}, not rank {rank} of {len(group.hosts)}")
    return world


@contextmanager
def _join_files(files: dict[str, str]) -> Iterator[None]:
    """Each variable naming a private file with its content, for as long as the backend starts."""
    if not files:
        yield
        return
    (name, content), *rest = files.items()
    with _private_file(content) as path:
        os.environ[name] = path
        with _join_files(dict(rest)):
            yield
