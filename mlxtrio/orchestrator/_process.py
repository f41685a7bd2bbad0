"""One worker process's lifetime: spawned, heard, relayed to the log, stopped, reaped.

This is the I/O side of a served model. It starts ``python -m
mlxtrio.worker`` with its channel, passes each message the worker sends on
as it arrives, copies the worker's stderr into the server's log, stops the
worker (a Shutdown, a bounded wait, then SIGKILL) or kills it for a cause,
and once the process is gone says why, from its exit status
(``_protocol.WorkerExit``) or the cause it was killed for. It decides
nothing about the model: that is ``_lifecycle.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping

import msgspec
import trio

from .. import _protocol as p
from ..ipc import Channel, IPCError, PeerGoneError, ProtocolError, TrioChannel, TrioChannelStatistics
from ._events import Exited

__all__ = ["WorkerProcess", "exit_reason", "relay_stderr", "worker_command"]

# What the worker writes to stderr (warnings, tracebacks) goes to this logger, line by line.
worker_log = logging.getLogger("mlxtrio.worker")

# Graceful stop: how long the worker may take to exit after Shutdown.
EXIT_WAIT = 5.0
# The worker's exits that say why it stopped.
_EXIT_REASONS = {
    p.WorkerExit.CHANNEL_BROKEN: ("protocol", "the model worker lost its channel to the server"),
    p.WorkerExit.GENERATION_BROKEN: ("generation", "the model worker exited after repeated generation failures; it will be restarted"),
    p.WorkerExit.PROTOCOL_ERROR: ("protocol", "the model worker received a message it could not read, and exited"),
    p.WorkerExit.GROUP_BROKEN: ("crash", "the model worker exited: a rank of its worker group failed or went away"),
}


async def relay_stderr(stream: trio.abc.ReceiveStream, label: str, done: trio.Event) -> None:
    """A worker's stderr into the server's log, a line at a time, each line after ``label`` (its pid, its model)."""
    pending = b""
    try:
        while chunk := await stream.receive_some(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    worker_log.warning("%s: %s", label, line.decode(errors="replace").rstrip())
        if pending.strip():
            worker_log.warning("%s: %s", label, pending.decode(errors="replace").rstrip())
    except trio.ClosedResourceError:
        pass
    finally:
        done.set()


def exit_reason(returncode: int) -> tuple[str, str]:
    """(cause, reason) for a worker's unexpected exit."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return "crash", f"the model worker was killed by {name}"
    return _EXIT_REASONS.get(returncode, ("crash", f"the model worker exited unexpectedly (status {returncode})"))


def worker_command(config: p.WorkerConfig, channel_spec: str) -> list[str]:
    """The command line of the worker (a group's rank 0) for ``config``, attached to the channel ``channel_spec``."""
    return [sys.executable, "-m", "mlxtrio.worker", msgspec.json.encode(config).decode(), channel_spec]


class WorkerProcess:
    """A running worker process and the orchestrator's end of its channel."""

    def __init__(self, process: trio.Process, channel: TrioChannel, *, model_id: str) -> None:
        self._process = process
        self._channel = channel
        self._model_id = model_id
        # (cause, reason) once the orchestrator has killed it for cause ("hang", "protocol").
        self._killed_for: tuple[str, str] | None = None

    @classmethod
    async def spawn(
        cls, config: p.WorkerConfig, *, environment: Mapping[str, str] | None, send_timeout: float
    ) -> WorkerProcess:
        """Start a worker for ``config`` with ``environment`` (None: this process's); OSError if it cannot start."""
        channel = Channel.create()
        trio_channel = TrioChannel(channel, send_timeout=send_timeout)
        command = worker_command(config, channel.spec.to_json())
        try:
            # Its own session: a terminal's Ctrl-C reaches the orchestrator, which decides.
            process = await trio.lowlevel.open_process(
                command, pass_fds=channel.pass_fds, start_new_session=True, stderr=subprocess.PIPE, env=environment
            )
        except OSError:
            with trio.CancelScope(shield=True):
                await trio_channel.aclose()
            raise
        finally:
            channel.close_worker_fds()
        return cls(process, trio_channel, model_id=config.model_id)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> None:
        """Until the process has exited."""
        await self._process.wait()

    def statistics(self) -> TrioChannelStatistics:
        return self._channel.statistics()

    async def send(self, message: p.ToWorker) -> None:
        """One message to the worker; IPCError if it cannot go."""
        await self._channel.send(p.TO_WORKER.encode(message))

    async def serve(self, report: Callable[[p.ToOrchestrator], None]) -> None:
        """Until the process exits: each message it sends to ``report``, its stderr to the log."""
        async with trio.open_nursery() as nursery:
            relayed = trio.Event()
            nursery.start_soon(self._receive, report)
            assert self._process.stderr is not None
            nursery.start_soon(relay_stderr, self._process.stderr, f"worker {self.pid} ({self._model_id})", relayed)
            await self._process.wait()
            # Its last words (a traceback, say) are in the pipe: read them out, briefly.
            with trio.move_on_after(1):
                await relayed.wait()
            nursery.cancel_scope.cancel()

    async def _receive(self, report: Callable[[p.ToOrchestrator], None]) -> None:
        decode = p.TO_ORCHESTRATOR.decode
        try:
            while True:
                message = decode(await self._channel.receive())
                if isinstance(message, p.Hello):
                    # Both sides are attached: nothing needs a name in /dev/shm any more.
                    self._channel.channel.unlink()
                report(message)
        except ProtocolError as exc:
            self.kill("protocol", f"the model worker sent a corrupt message ({exc}); it was killed and will be restarted")
        except IPCError:
            pass  # The process's exit is what ends this.

    def kill(self, cause: str, reason: str) -> None:
        """Kill it for cause: its exit is then put down to ``cause``, whatever its status says."""
        self._killed_for = (cause, reason)
        self._process.kill()

    async def stop(self) -> None:
        """Ask it to exit, wait a bounded time, then kill it."""
        with contextlib.suppress(IPCError), trio.move_on_after(1):
            await self.send(p.Shutdown())
        with trio.move_on_after(EXIT_WAIT):
            await self._process.wait()
        if self._process.returncode is None:
            self._process.kill()

    async def reap(self) -> Exited:
        """Make sure it is gone (SIGKILL if need be), and say why it went."""
        process = self._process
        if process.returncode is None:
            process.kill()
        await process.wait()
        if process.stderr is not None:
            await process.stderr.aclose()
        cause, reason = self._killed_for or exit_reason(process.returncode)
        return Exited(process.pid, process.returncode, cause, reason)

    async def close(self, reason: str) -> None:
        """After ``reap``: every send still waiting raises PeerGoneError(``reason``); then the channel is freed."""
        self._channel.stop(PeerGoneError(reason))
        await self._channel.aclose()
