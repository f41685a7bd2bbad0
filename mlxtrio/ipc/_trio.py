"""The orchestrator's side of a channel, for Trio.

Receiving needs no thread. The worker rings the channel's doorbell (one byte
into a pipe) after every post of the ring's ``frames`` semaphore, and the
receiving task waits for the pipe with ``trio.lowlevel.wait_readable``, then
takes the frame with a non-blocking ``sem_trywait``. A thread blocked in
``sem_wait`` would have to be woken and handed back to the event loop (two
more wake-ups per token), and a cancelled wait could abandon it, to swallow a
unit meant for the next reader.
Here a cancelled receive is a cancelled ``wait_readable``: nothing taken. The
doorbell's end-of-file, when the worker dies, ends receives at once.

Sending tries first without blocking, in the Trio thread (room is nearly
always there). A send that finds the channel free and room in the ring
returns without yielding to the scheduler (it still raises Cancelled if its
scope is cancelled): a request's ``Generate`` then leaves in the same turn
as the request's body, instead of after one more turn of every other
request's HTTP work. In a burst that is what lets the worker admit the first
requests while the orchestrator is still taking in the rest. When the ring
is full, the wait for space happens in a thread started through
``trio.to_thread`` with the channel's own CapacityLimiter, waiting in slices
(``WAIT_SLICE``) that check ``trio.from_thread.check_cancelled()`` and
the channel's stop reason; it is never abandoned, and cancellable until the
first chunk of its message is out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._channel import Channel
from ._errors import BrokenRingError, IPCError, PeerGoneError

__all__ = ["TrioChannel", "TrioChannelStatistics"]


@attrs.frozen
class TrioChannelStatistics:
    """What went through a channel, as its two rings count it, and how its sends and receives waited."""

    messages_sent: int
    messages_received: int
    # Messages longer than a quarter of the ring cross it in several chunks.
    chunks_sent: int
    chunks_received: int
    bytes_sent: int
    bytes_received: int
    # Sends that found the ring full and waited in a thread.
    blocking_sends: int
    # Receives that found nothing and waited for the doorbell.
    doorbell_waits: int
    threads_in_flight: int
    stopped: bool


class TrioChannel:
    """Async, cancellation-safe ``send`` and ``receive`` over the orchestrator's end of a Channel.

    Any number of tasks may send (serialised, first come first served); one
    task at a time receives (the design has one long-lived reader task per
    channel, which routes messages on).
    """

    def __init__(self, channel: Channel, *, send_timeout: float | None = None) -> None:
        if channel.doorbell_fd is None:
            raise ValueError("TrioChannel needs the orchestrator's end of a channel (Channel.create)")
        self._channel = channel
        self._doorbell = channel.doorbell_fd
        self._send_timeout = send_timeout
        # Only senders use threads, and one at a time (they hold the send lock).
        self._limiter = trio.CapacityLimiter(1)
        self._send_lock = trio.Lock()
        self._receiving = False
        self._peer_closed = False
        self._stop_reason: IPCError | None = None
        self._threads_in_flight = 0
        self._no_threads = trio.Event()
        self._no_threads.set()
        self._closed = False
        self._blocking_sends = 0
        self._doorbell_waits = 0

    @property
    def channel(self) -> Channel:
        return self._channel

    def stop(self, reason: IPCError) -> None:
        """Make every current and future send or receive raise ``reason``.

        The orchestrator calls this the moment it sees the worker exit or hang,
        so no task waits out a timeout for a peer that is gone. The first
        reason wins.
        """
        if self._stop_reason is None:
            self._stop_reason = reason
            if self._receiving:
                # Wake the receive parked on the doorbell (it then raises the reason).
                trio.lowlevel.notify_closing(self._doorbell)

    def _raise_if_stopped(self) -> None:
        if self._stop_reason is not None:
            raise type(self._stop_reason)(*self._stop_reason.args)
        if self._closed:
            raise BrokenRingError("channel is closed")

    # --- receiving ------------------------------------------------------------

    async def receive(self) -> bytes:
        """The next message. If cancelled, it raises Cancelled having consumed nothing."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            reader = self._channel.reader
            waited = False
            while True:
                self._raise_if_stopped()
                frame = reader.receive(timeout=0)
                if frame is not None:
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return frame
                if self._peer_closed:
                    raise PeerGoneError("the worker closed its end of the channel (it exited)")
                self._doorbell_waits += 1
                try:
                    await trio.lowlevel.wait_readable(self._doorbell)
                except trio.ClosedResourceError:
                    continue  # stop() woke us: the loop raises the reason
                waited = True
                self._drain_doorbell()
        finally:
            self._receiving = False

    def _drain_doorbell(self) -> None:
        while True:
            try:
                data = os.read(self._doorbell, 65536)
            except BlockingIOError:
                return
            if not data:
                # End of file: every write end is closed. Frames already
                # published are still delivered before the error.
                self._peer_closed = True
                return
            if len(data) < 65536:
                return

    # --- sending --------------------------------------------------------------

    async def send(self, payload: bytes) -> None:
        """Send one message; waits (in a thread, up to ``send_timeout``) while the ring is full.

        Returns without a schedule point when no other send is under way and
        the ring has room (see the module's docstring).
        """
        if not self._send_lock.locked():
            # No sender ahead (a waiting one holds the lock): order is kept.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._raise_if_stopped()
            if self._channel.writer.try_send(payload):
                return
        async with self._send_lock:
            self._raise_if_stopped()
            if self._channel.writer.try_send(payload):
                return
            self._blocking_sends += 1
            await self._in_thread(self._send_blocking, payload)

    def _send_blocking(self, payload: bytes) -> None:
        self._channel.writer.send(payload, timeout=self._send_timeout, interrupt=self._writer_interrupt)

    def _writer_interrupt(self, published: bool) -> None:
        """Between the wait slices of a blocked send, in its thread."""
        self._raise_if_stopped()
        # Once part of a chunked message is out, finish it: abandoning it would
        # leave the ring mid-message. Only a stop (peer gone) cuts it short.
        if not published:
            trio.from_thread.check_cancelled()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._threads_in_flight += 1
        if self._threads_in_flight == 1:
            self._no_threads = trio.Event()
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=False)
        finally:
            self._threads_in_flight -= 1
            if self._threads_in_flight == 0:
                self._no_threads.set()

    # --- lifetime ---------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the send thread (within one wait slice), then unlink and unmap everything."""
        if self._closed:
            return
        self.stop(BrokenRingError("channel is closing"))
        with trio.CancelScope(shield=True):
            await self._no_threads.wait()
        self._closed = True
        self._channel.unlink()
        self._channel.close()

    def statistics(self) -> TrioChannelStatistics:
        sent = self._channel.writer.statistics()
        received = self._channel.reader.statistics()
        return TrioChannelStatistics(
            messages_sent=sent.messages,
            messages_received=received.messages,
            chunks_sent=sent.chunks,
            chunks_received=received.chunks,
            bytes_sent=sent.bytes,
            bytes_received=received.bytes,
            blocking_sends=self._blocking_sends,
            doorbell_waits=self._doorbell_waits,
            threads_in_flight=self._threads_in_flight,
            stopped=self._stop_reason is not None or self._closed,
        )
