"""A worker group's settings: a config file model's ``hosts``, ``parallel``, ``backend`` and ``python``, and the group ports.

``_config.py`` parses them with the rest; what they must satisfy beyond
their types is here, with the defaults of a model's group settings.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
import sys
import typing

import attrs

if typing.TYPE_CHECKING:
    from ._model_settings import ModelSettings

__all__ = ["GROUP_PORT_SPAN", "checked_group", "is_local_address", "parse_group_port", "parse_group_ssh", "parse_hosts"]

PARALLEL_MODES = ("pipeline", "tensor")
BACKENDS = ("ring", "jaccl", "nccl")
# The ports groups are given lie in [group_port, group_port + GROUP_PORT_SPAN): below Linux's ephemeral range.
GROUP_PORT_SPAN = 256
_EPHEMERAL_START = 32768


def parse_hosts(value: object) -> tuple[str, ...]:
    """A group's hosts: a list of at least two IP addresses, rank 0's first."""
    if not isinstance(value, list | tuple) or not all(isinstance(host, str) for host in value):
        raise ValueError(f"hosts must be a list of IP addresses, not {value!r}")
    hosts = []
    for host in value:
        try:
            hosts.append(str(ipaddress.ip_address(host.strip().removeprefix("[").removesuffix("]"))))
        except ValueError:
            raise ValueError(f"hosts: {host!r} is not an IP address (a host name would resolve differently on each rank)") from None
    if len(hosts) < 2:
        raise ValueError("hosts must name at least two ranks' addresses, rank 0's first (none: one process)")
    return tuple(hosts)


def parse_rdma(value: object) -> tuple[tuple[str | tuple[str, ...] | None, ...], ...]:
    """JACCL's RDMA devices: for each rank, for each rank, the device (or devices, a cable each) that joins them; "" for none.

    ``mlx.distributed_config`` writes null for none, which TOML cannot say.
    """
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise ValueError("rdma must be a list with a list for each rank")

    def device(entry: object) -> str | tuple[str, ...] | None:
        if isinstance(entry, str):
            return entry or None
        if isinstance(entry, list) and entry and all(isinstance(name, str) and name for name in entry):
            return tuple(entry)
        raise ValueError(f"rdma: {entry!r} is not a device name, a list of them, or \"\" for none")

    return tuple(tuple(device(entry) for entry in row) for row in value)


def is_local_address(host: str) -> bool:
    """Whether ``host`` (an IP address) is one of this machine's: the kernel lets a socket bind to it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


def checked_group(model: ModelSettings, *, where: str) -> ModelSettings:
    """``model`` with its group settings' defaults filled in; ValueError (starting with ``where``) if they are wrong."""
    if not model.hosts:
        given = [name for name in ("parallel", "backend", "python") if getattr(model, name) is not None] + ["rdma"] * bool(model.rdma)
        if given:
            raise ValueError(f"{where}: {', '.join(given)} without hosts: only a worker group (hosts = [...]) has them")
        return model
    if model.parallel is not None and model.parallel not in PARALLEL_MODES:
        raise ValueError(f'{where}: parallel = {model.parallel!r}: must be "pipeline" or "tensor"')
    if model.backend is not None and model.backend not in BACKENDS:
        raise ValueError(f'{where}: backend = {model.backend!r}: must be "ring", "jaccl" or "nccl"')
    if (model.backend == "jaccl") != bool(model.rdma):
        raise ValueError(f'{where}: rdma is the jaccl backend\'s RDMA devices: backend = "jaccl" needs it, and only it takes it')
    if model.rdma and (len(model.rdma) != len(model.hosts) or any(len(row) != len(model.hosts) for row in model.rdma)):
        raise ValueError(f"{where}: rdma must have a row for each of the {len(model.hosts)} hosts, each with an entry for each host")
    if model.python is not None and not model.python.strip():
        raise ValueError(f"{where}: python must name the interpreter on the other hosts")
    loopback = [ipaddress.ip_address(host).is_loopback for host in model.hosts]
    if any(loopback) and not all(loopback):
        raise ValueError(f"{where}: hosts = {list(model.hosts)}: a loopback address cannot be reached from another host")
    if not is_local_address(model.hosts[0]):
        raise ValueError(
            f"{where}: hosts = {list(model.hosts)}: the first host is rank 0's, and {model.hosts[0]} is no address of this machine"
        )
    return attrs.evolve(
        model, parallel=model.parallel or "pipeline", backend=model.backend or "ring", python=model.python or sys.executable
    )


def parse_group_port(value: object) -> int:
    """The first port of the groups' range: ValueError if the range would not lie between 1024 and the ephemeral ports."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a port number, not {value!r}")
    port = int(value)
    if not 1024 <= port or port + GROUP_PORT_SPAN > _EPHEMERAL_START:
        raise ValueError(
            f"must be at least 1024 and at most {_EPHEMERAL_START - GROUP_PORT_SPAN} (groups take ports up to "
            f"{GROUP_PORT_SPAN} above it, below the ephemeral range at {_EPHEMERAL_START})"
        )
    return port


def parse_group_ssh(value: object) -> str:
    """The command line that starts a remote rank (the host and the command follow it)."""
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {type(value).__name__}")
    if not shlex.split(value):  # ValueError for an unclosed quote
        raise ValueError("must be a command line (the default: ssh -o BatchMode=yes)")
    return value
