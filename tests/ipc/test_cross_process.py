"""The Trio side against a real second process."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import struct
import sys
import time

import msgspec
import pytest
import trio
import trio.testing

from mlxtrio.ipc import Codec, MessageRouter, PeerGoneError, RingTimeoutError

from ..helpers import bounded
from .conftest import open_peer

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process APIs")


@bounded(60)
async def test_echo_round_trips_of_every_size():
    rng = random.Random(7)
    sizes = [0, 1, 63, 64, 65, 4096, 16 * 1024, 16 * 1024 + 1, 100_000, 1024 * 1024]
    sizes += [rng.randrange(0, 70_000) for _ in range(300)]
    async with open_peer("echo") as peer:
        for size in sizes:
            payload = rng.randbytes(size)
            await peer.channel.send(payload)
            assert await peer.channel.receive() == payload


@bounded(60)
async def test_many_small_frames_arrive_in_order():
    count = 20_000
    async with open_peer("source", count, 64) as peer:
        for index in range(count):
            frame = await peer.channel.receive()
            assert len(frame) == 64
            assert struct.unpack_from("<Q", frame)[0] == index


@bounded(60)
async def test_slow_consumer_gets_backpressure_not_errors():
    messages = [bytes([i]) * 1000 for i in range(60)]
    async with open_peer("slow-echo", 0.002, capacity=4096) as peer:
        received = []

        async def read_back() -> None:
            for _ in messages:
                received.append(await peer.channel.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_back)
            for message in messages:
                await peer.channel.send(message)
        assert received == messages
        # The ring holds three of these at most: the sender must have waited.
        assert peer.channel.statistics().blocking_sends > 0


@bounded(60)
async def test_sigkill_of_peer_blocked_on_empty_ring_is_noticed_fast():
    async with open_peer("echo") as peer:
        async with trio.open_nursery() as nursery:
            failure: list[BaseException] = []
            noticed_at: list[float] = []

            async def receive() -> None:
                try:
                    await peer.channel.receive()
                except PeerGoneError as exc:
                    noticed_at.append(time.monotonic())
                    failure.append(exc)

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            peer.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
        assert failure, "receive did not fail"
        assert noticed_at[0] - killed_at < 0.1 + 0.05  # 100 ms target, 50 ms of scheduling margin


@bounded(60)
async def test_sigkill_mid_message_leaves_no_hang():
    async with open_peer("die-mid-message", capacity=4096) as peer:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                outcome: list[BaseException] = []

                async def receive() -> None:
                    try:
                        await peer.channel.receive()
                    except PeerGoneError as exc:
                        outcome.append(exc)

                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                await peer.channel.send(b"go")
        assert outcome, "the reader did not learn that the peer died"
        stats = peer.channel.channel.reader.statistics()
        # "attached" alone: the partial message is none. Of its two published chunks the reader may have read
        # both, one or none before it saw the peer gone (a loaded machine schedules it late).
        assert stats.messages == 1 and 1 <= stats.chunks <= 3


@bounded(60)
async def test_sigkill_while_peer_blocked_writing_and_we_blocked_sending():
    async with open_peer("slow-echo", 3600, capacity=4096) as peer:
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def flood() -> None:
                try:
                    while True:
                        await peer.channel.send(b"z" * 900)
                except PeerGoneError as exc:
                    outcome.append(exc)

            nursery.start_soon(flood)
            await trio.testing.wait_all_tasks_blocked()
            assert peer.channel.statistics().threads_in_flight == 1  # blocked on the full ring
            peer.process.send_signal(signal.SIGKILL)
        assert outcome


@bounded(60)
async def test_full_ring_send_times_out_with_a_clear_error():
    async with open_peer("slow-echo", 3600, capacity=4096, send_timeout=0.2) as peer:
        with pytest.raises(RingTimeoutError, match="reader is not reading"):
            while True:
                await peer.channel.send(b"z" * 900)


@bounded(60)
async def test_cancelled_receive_takes_nothing_and_next_reader_gets_the_frame():
    async with open_peer("echo") as peer:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.channel.receive)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        await peer.channel.send(b"after the cancel")
        assert await peer.channel.receive() == b"after the cancel"


@bounded(60)
async def test_cancelling_sends_blocked_on_the_semaphore_loses_and_duplicates_nothing():
    """Blocked sends wait in a thread on the ``slots`` semaphore; cancel them at random moments."""
    rng = random.Random(5)
    async with open_peer("slow-echo", 0.001, capacity=4096) as peer:
        sent: list[int] = []
        cancelled = 0
        echoed: list[int] = []

        async def collect() -> None:
            while (frame := await peer.channel.receive()) != b"end":
                echoed.append(struct.unpack_from("<I", frame)[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            for index in range(300):
                # Four of these fill the ring: most sends wait for the slow peer.
                with trio.move_on_after(rng.random() * 0.004) as scope:
                    await peer.channel.send(struct.pack("<I", index) + bytes(996))
                    sent.append(index)
                cancelled += scope.cancelled_caught
                assert peer.channel.statistics().threads_in_flight == 0  # never abandoned
            await peer.channel.send(b"end")
        assert echoed == sent
        assert cancelled > 0 and peer.channel.statistics().blocking_sends > cancelled


@bounded(60)
async def test_cancelled_blocked_send_publishes_nothing():
    size = 1000
    async with open_peer("slow-echo", 0.3, capacity=4096) as peer:
        sent = []
        with trio.move_on_after(0.15):
            # The ring holds four of these; the fifth waits for space and is cancelled.
            while True:
                message = bytes([len(sent)]) * size
                await peer.channel.send(message)
                sent.append(message)
        assert peer.channel.statistics().blocking_sends == 1
        await peer.channel.send(b"final")
        echoed = [await peer.channel.receive() for _ in range(len(sent) + 1)]
        assert echoed == [*sent, b"final"]


@bounded(60)
async def test_a_send_that_finds_room_does_not_yield():
    # A request's Generate must leave in the turn its body came in (ipc/_trio.py says why).
    async with open_peer("echo") as peer:
        ran: list[str] = []

        async def another() -> None:
            ran.append("another task")

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                # Runnable from now on: it runs at this task's next schedule point, or
                # (Trio reverses half its batches) at the one after.
                nursery.start_soon(another)
                await peer.channel.send(b"at once")
                assert ran == []
        assert [await peer.channel.receive() for _ in range(20)] == [b"at once"] * 20


@bounded(60)
async def test_a_send_in_a_cancelled_scope_raises_and_publishes_nothing():
    async with open_peer("echo") as peer:
        with trio.CancelScope() as scope:
            scope.cancel()
            await peer.channel.send(b"never")
        assert scope.cancelled_caught
        await peer.channel.send(b"after")
        assert await peer.channel.receive() == b"after"


@bounded(60)
async def test_cancellation_racing_arrivals_loses_and_duplicates_nothing():
    rng = random.Random(3)
    count = 300
    async with open_peer("echo") as peer:
        received: list[bytes] = []

        async def send_all() -> None:
            for index in range(count):
                await peer.channel.send(struct.pack("<I", index))
                await trio.sleep(rng.random() * 0.002)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            while len(received) < count:
                # Receives cut short at random moments, some while a frame arrives.
                with trio.move_on_after(rng.random() * 0.003):
                    received.append(await peer.channel.receive())
        assert [struct.unpack("<I", frame)[0] for frame in received] == list(range(count))


class Token(msgspec.Struct, tag="token", array_like=True):
    request: int
    index: int


@bounded(60)
async def test_router_fans_out_each_message_to_its_own_route():
    codec: Codec[Token] = Codec(Token)
    router: MessageRouter[Token] = MessageRouter(key=lambda message: message.request)
    requests, per_request = 20, 30
    async with open_peer("echo") as peer:
        got: dict[int, list[int]] = {}

        async def read() -> None:
            # As the orchestrator's reader does: receive, decode, route.
            while True:
                router.route(codec.decode(await peer.channel.receive()))

        async def client(request: int) -> None:
            with router.open_routes([request]) as route:
                for index in range(per_request):
                    await peer.channel.send(codec.encode(Token(request, index)))
                got[request] = [(await route.receive()).index for _ in range(per_request)]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            async with trio.open_nursery() as clients:
                for request in range(requests):
                    clients.start_soon(client, request)
            nursery.cancel_scope.cancel()
        assert got == {request: list(range(per_request)) for request in range(requests)}
        assert router.statistics().delivered == requests * per_request


@bounded(60)
async def test_router_close_all_reaches_every_open_route():
    router: MessageRouter[object] = MessageRouter(key=lambda message: None)
    finals = []
    async with trio.open_nursery() as nursery:

        async def wait(key: int) -> None:
            with router.open_routes([key]) as route:
                async for message in route:
                    finals.append(message)

        for key in range(5):
            nursery.start_soon(wait, key)
        await trio.testing.wait_all_tasks_blocked()
        router.close_all(lambda key: ("worker died", key))
    assert sorted(finals) == [("worker died", key) for key in range(5)]


@bounded(60)
@linux_only
async def test_worker_exits_by_itself_when_its_parent_dies():
    # Become a subreaper so the orphaned grandchild is reparented to us and can be reaped.
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        script = f"""
import subprocess, sys, time
from mlxtrio.ipc import Channel
channel = Channel.create(capacity=4096)
child = subprocess.Popen([sys.executable, {str(os.path.join(os.path.dirname(__file__), "peer.py"))!r}, "block", channel.spec.to_json()], pass_fds=channel.pass_fds)
channel.close_worker_fds()
assert channel.reader.receive(timeout=20) == b"attached"
channel.unlink()
print(child.pid, flush=True)
time.sleep(3600)
"""
        middle = await trio.lowlevel.open_process([sys.executable, "-c", script], stdout=-1)
        try:
            with trio.fail_after(20):
                line = b""
                while not line.endswith(b"\n"):
                    line += await middle.stdout.receive_some()
            grandchild = int(line)
            middle.kill()
            killed_at = time.monotonic()
            await middle.wait()
            with trio.fail_after(5):
                _, status = await trio.to_thread.run_sync(os.waitpid, grandchild, 0, abandon_on_cancel=True)
            assert os.waitstatus_to_exitcode(status) == 3  # it saw PeerGoneError and left
            assert time.monotonic() - killed_at < 0.5
        finally:
            middle.kill()
            await middle.wait()
            await middle.stdout.aclose()
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@bounded(30)
async def test_router_several_keys_share_one_route_and_get_one_final_message():
    router: MessageRouter[tuple] = MessageRouter(key=lambda message: message[0])
    with router.open_routes([1, 2]) as route:
        for message in ((1, "a"), (2, "b"), (3, "nobody's")):
            router.route(message)
        assert [route.receive_nowait(), route.receive_nowait()] == [(1, "a"), (2, "b")]
        router.close_all(lambda key: ("worker died", key))
        assert route.receive_nowait()[0] == "worker died"
        with pytest.raises(trio.EndOfChannel):
            route.receive_nowait()
    assert router.statistics().unrouted == 1
    with pytest.raises(KeyError):
        with router.open_routes([5, 5]):
            pass
