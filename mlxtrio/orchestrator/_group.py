"""A worker group's processes: rank 0 (a WorkerProcess, on the channel) and its followers, as one unit.

A model with ``hosts`` runs as several ranks over mlx.distributed. Rank 0 is
the worker the orchestrator talks to; ranks 1 and up are started beside it,
as child processes on this machine or over ssh on the others, and say
nothing but their stderr. The group has ``WorkerProcess``'s interface, so
that a served model runs either the same way. Any rank's exit ends the
group at once (a rank left alone would block in the ring forever), and the
group's ``Exited`` names the rank that went first.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import secrets
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping

import attrs
import msgspec
import trio

from .. import _protocol as p
from .._group_settings import GROUP_PORT_SPAN, is_local_address
from ..ipc import IPCError, TrioChannelStatistics
from . import _process
from ._events import Exited
from ._process import WorkerProcess, exit_reason, relay_stderr

__all__ = ["GroupPorts", "RankState", "WorkerGroup", "follower_command", "runs_here"]

log = logging.getLogger("mlxtrio.orchestrator")


class GroupPorts:
    """The ports live groups hold: each start takes its own, each reap gives them back."""

    def __init__(self) -> None:
        self._held: set[int] = set()

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def take(self, base: int, hosts: tuple[str, ...]) -> tuple[tuple[int, ...], int]:
        """A ring port per rank and a control port on ``hosts[0]``, from [base, base + span); OSError if none are left.

        A port this machine cannot bind is passed over where the rank runs here (another program holds it).
        """
        ports: list[int] = []
        wanted = [*hosts, hosts[0]]
        candidate = base
        while len(ports) < len(wanted):
            if candidate >= base + GROUP_PORT_SPAN:
                raise OSError(f"no free group ports left in {base}-{base + GROUP_PORT_SPAN - 1} (MLX_GROUP_PORT)")
            host = wanted[len(ports)]
            if candidate not in self._held and candidate not in ports and (not runs_here(host) or _bindable(host, candidate)):
                ports.append(candidate)
            candidate += 1
        self._held.update(ports)
        return tuple(ports[:-1]), ports[-1]

    def give_back(self, ports: tuple[int, ...]) -> None:
        self._held.difference_update(ports)


# Every group of this process takes its ports here: two models' groups never share one.
GROUP_PORTS = GroupPorts()


@functools.cache
def runs_here(host: str) -> bool:
    """Whether a rank on ``host`` runs on this machine (a child process), not over ssh."""
    return ipaddress.ip_address(host).is_loopback or is_local_address(host)


def _bindable(host: str, port: int) -> bool:
    """Whether a listener could bind ``port`` on ``host`` and on every address (as ranks do: a closed link's TIME_WAIT is no holder)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for address in (host, "::" if family == socket.AF_INET6 else "0.0.0.0"):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((address, port))
        except OSError:
            return False
    return True


def follower_command(config: p.WorkerConfig, rank: int, python: str) -> list[str]:
    """The command line of rank ``rank`` (1 and up): ``python -m mlxtrio.worker --rank R CONFIG``."""
    return [python, "-m", "mlxtrio.worker", "--rank", str(rank), msgspec.json.encode(config).decode()]


@attrs.frozen
class RankState:
    """One rank as the group's processes know it (what it reported once loaded is in Ready.ranks)."""

    rank: int
    host: str
    pid: int
    running: bool


@attrs.define(eq=False)
class _Follower:
    rank: int
    host: str
    process: trio.Process
    # What its stderr's lines are logged after: its pid (the rank's, or its ssh's), model, rank and host.
    label: str


class WorkerGroup:
    """A running worker group: rank 0's WorkerProcess and the followers' processes."""

    def __init__(
        self, leader: WorkerProcess, followers: list[_Follower], *, hosts: tuple[str, ...], ports: tuple[int, ...], held: GroupPorts
    ) -> None:
        self._leader = leader
        self._followers = followers
        self._hosts = hosts
        self._ports = ports
        self._held = held
        # The rank that went first, and its exit status, once one has.
        self._first: tuple[int, int] | None = None
        self._killed_for: tuple[str, str] | None = None
        # A planned stop: ranks exit one after another, each within the bounded wait, none killed for another's exit.
        self._stopping = False

    @classmethod
    async def spawn(
        cls,
        config: p.WorkerConfig,
        *,
        environment: Mapping[str, str] | None,
        send_timeout: float,
        base_port: int,
        ssh: str,
        python: str,
        held: GroupPorts = GROUP_PORTS,
    ) -> WorkerGroup:
        """Start every rank of ``config.group``; OSError (with nothing left running) if one cannot start."""
        group = config.group
        assert group is not None
        ring_ports, control_port = held.take(base_port, group.hosts)
        ports = (*ring_ports, control_port)
        config = msgspec.structs.replace(config, group=msgspec.structs.replace(group, ports=ring_ports, control_port=control_port))
        # A secret of this start, which each rank shows rank 0: nothing else that reaches the control port may join.
        token = secrets.token_urlsafe(24)
        environment = {**(os.environ if environment is None else environment), p.GROUP_TOKEN_VARIABLE: token}
        followers: list[_Follower] = []
        leader = None
        try:
            leader = await WorkerProcess.spawn(config, environment=environment, send_timeout=send_timeout)
            for rank, host in enumerate(group.hosts[1:], start=1):
                command = follower_command(config, rank, sys.executable if runs_here(host) else python)
                if not runs_here(host):
                    command = [*shlex.split(ssh), host, shlex.join(command)]
                process = await trio.lowlevel.open_process(
                    command,
                    stdin=subprocess.DEVNULL if runs_here(host) else subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    # Its own session, as rank 0's: a terminal's Ctrl-C reaches the orchestrator, which decides.
                    start_new_session=True,
                    env=environment if runs_here(host) else None,
                )
                if process.stdin is not None:
                    # The token's first line: a command line would show it to every user of the other host.
                    with contextlib.suppress(trio.BrokenResourceError):
                        await process.stdin.send_all(f"{token}\n".encode())
                    await process.stdin.aclose()
                what = f"rank {rank}" if runs_here(host) else f"rank {rank}'s ssh"
                followers.append(_Follower(rank, host, process, f"worker {process.pid} ({config.model_id} {what} on {host})"))
        except BaseException:
            with trio.CancelScope(shield=True):
                for follower in followers:
                    follower.process.kill()
                    await follower.process.wait()
                    await _close_stderr(follower.process)
                if leader is not None:
                    await leader.reap()
                    await leader.close("the worker group could not start")
                held.give_back(ports)
            raise
        return cls(leader, followers, hosts=group.hosts, ports=ports, held=held)

    @property
    def pid(self) -> int:
        return self._leader.pid

    @property
    def running(self) -> bool:
        return self._leader.running or any(follower.process.returncode is None for follower in self._followers)

    def ranks(self) -> list[RankState]:
        states = [RankState(0, self._hosts[0], self._leader.pid, self._leader.running)]
        for follower in self._followers:
            states.append(RankState(follower.rank, follower.host, follower.process.pid, follower.process.returncode is None))
        return states

    def statistics(self) -> TrioChannelStatistics:
        return self._leader.statistics()

    async def send(self, message: p.ToWorker) -> None:
        """One message to rank 0; IPCError if it cannot go."""
        await self._leader.send(message)

    async def serve(self, report: Callable[[p.ToOrchestrator], None]) -> None:
        """Until any rank exits: rank 0's messages to ``report``, every rank's stderr to the log; then every rank is killed."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_leader, report)
            for follower in self._followers:
                nursery.start_soon(self._watch, follower)
        # Each rank has exited: their last words are in the log (rank 0's serve waits for them too).

    async def _serve_leader(self, report: Callable[[p.ToOrchestrator], None]) -> None:
        await self._leader.serve(report)
        self._went(0, self._leader.returncode)

    async def _watch(self, follower: _Follower) -> None:
        relayed = trio.Event()
        async with trio.open_nursery() as nursery:
            assert follower.process.stderr is not None
            nursery.start_soon(relay_stderr, follower.process.stderr, follower.label, relayed)
            await follower.process.wait()
            self._went(follower.rank, follower.process.returncode)
            with trio.move_on_after(1):
                await relayed.wait()
            nursery.cancel_scope.cancel()

    def _went(self, rank: int, returncode: int | None) -> None:
        """A rank has exited: the first one decides the group's exit, and the others go at once."""
        if self._first is None:
            assert returncode is not None
            self._first = (rank, returncode)
            if not self._stopping:
                self._kill_all()

    def _kill_all(self) -> None:
        for follower in self._followers:
            if follower.process.returncode is None:
                follower.process.kill()
        if self._leader.running:
            # Not put down to a cause: the group's exit is the first rank's.
            with contextlib.suppress(ProcessLookupError):
                self._leader.kill("group", "killed with its group")

    def kill(self, cause: str, reason: str) -> None:
        """Kill every rank for cause: the group's exit is then put down to ``cause``, whatever the ranks' statuses say."""
        self._killed_for = (cause, reason)
        self._kill_all()

    async def stop(self) -> None:
        """Ask rank 0 to stop the group, wait a bounded time for every rank, then kill those still there."""
        self._stopping = True
        with contextlib.suppress(IPCError), trio.move_on_after(1):
            await self.send(p.Shutdown())
        with trio.move_on_after(_process.EXIT_WAIT):
            await self._leader.wait()
            for follower in self._followers:
                await follower.process.wait()
        for follower in self._followers:
            if follower.process.returncode is None:
                log.warning("%s did not stop within %g s of its group's stop: killed", follower.label, _process.EXIT_WAIT)
        self._kill_all()

    async def reap(self) -> Exited:
        """Make sure every rank is gone (SIGKILL if need be), free the group's ports, and say why it went."""
        self._kill_all()
        for follower in self._followers:
            await follower.process.wait()
            await _close_stderr(follower.process)
        leader = await self._leader.reap()
        self._held.give_back(self._ports)
        if self._killed_for is not None:
            return Exited(leader.pid, leader.returncode, *self._killed_for)
        rank, returncode = self._first or (0, leader.returncode)
        if rank == 0:
            cause, why = leader.cause, leader.reason
            pid = leader.pid
        else:
            cause, why = exit_reason(returncode)
            pid = self._followers[rank - 1].process.pid
        return Exited(pid, returncode, cause, f"rank {rank} (pid {pid}, {self._hosts[rank]}): {why}")

    async def close(self, reason: str) -> None:
        """After ``reap``: rank 0's channel is freed (every send still waiting raises PeerGoneError(``reason``))."""
        await self._leader.close(reason)


async def _close_stderr(process: trio.Process) -> None:
    if process.stderr is not None:
        await process.stderr.aclose()
