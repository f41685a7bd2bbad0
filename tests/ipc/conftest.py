from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import trio

from mlxtrio.ipc import Channel, PeerGoneError, TrioChannel

PEER = Path(__file__).with_name("peer.py")


@attrs.frozen
class Peer:
    process: trio.Process
    channel: TrioChannel
    exited: trio.Event


async def start_peer(mode: str, channel: Channel, *args: object) -> trio.Process:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(PEER), mode, channel.spec.to_json(), *map(str, args)], pass_fds=channel.pass_fds
    )
    channel.close_worker_fds()
    return process


@contextlib.asynccontextmanager
async def open_peer(
    mode: str, *args: object, capacity: int = 64 * 1024, send_timeout: float | None = 10
) -> AsyncIterator[Peer]:
    """A real second process attached to a fresh channel, watched like the supervisor watches a worker."""
    channel = Channel.create(capacity=capacity)
    trio_channel = TrioChannel(channel, send_timeout=send_timeout)
    exited = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            process = await start_peer(mode, channel, *args)

            async def watch() -> None:
                await process.wait()
                trio_channel.stop(PeerGoneError(f"peer exited with status {process.returncode}"))
                exited.set()

            nursery.start_soon(watch)
            try:
                with trio.fail_after(20):
                    assert await trio_channel.receive() == b"attached"
                channel.unlink()
                yield Peer(process, trio_channel, exited)
            finally:
                with trio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio_channel.aclose()
