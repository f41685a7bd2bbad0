"""The far side of a channel in IPC tests: a real second process.

Usage: python peer.py MODE SPEC_JSON [ARG...]. It attaches, unlinks nothing
(the creator does that once it hears "attached"), sends b"attached", then:

echo            send back every message received
source N SIZE   send N messages of SIZE bytes (message i starts with i as 8 bytes), then wait
sink            receive, and after b"report" send the count and total bytes received
slow-echo S     echo, sleeping S seconds before each receive (a slow consumer)
big SIZE        send one message of SIZE bytes, then wait
die-mid-message after b"go", SIGKILL itself between two chunks of one message
block           block on receive and exit 3 when the parent is gone (parent_watch)
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time

from mlxtrio.ipc import Channel, ChannelSpec, PeerGoneError, parent_watch


def main() -> int:
    mode, spec_json, *args = sys.argv[1:]
    channel = Channel.attach(ChannelSpec.from_json(spec_json))
    watch = parent_watch()
    send = channel.writer.send
    receive = channel.reader.receive
    try:
        send(b"attached")
    except PeerGoneError:
        # The parent may read the message and be gone before the doorbell's byte follows it (block mode's test
        # kills it as soon as it has read it): the peer saw its parent go.
        return 3
    if mode == "echo":
        while True:
            send(receive(interrupt=watch), interrupt=watch)
    elif mode == "slow-echo":
        delay = float(args[0])
        while True:
            time.sleep(delay)
            send(receive(interrupt=watch), interrupt=watch)
    elif mode == "source":
        count, size = int(args[0]), int(args[1])
        for index in range(count):
            send((struct.pack("<Q", index) + bytes(size))[: max(size, 8)], interrupt=watch)
        receive(interrupt=watch)  # stay attached until told
    elif mode == "sink":
        count = total = 0
        while (message := receive(interrupt=watch)) != b"report":
            count += 1
            total += len(message)
        send(struct.pack("<QQ", count, total))
        receive(interrupt=watch)
    elif mode == "big":
        # Larger than the ring: the reader gets it in chunks while this side
        # waits for space, so a kill here leaves the reader mid-message.
        send(b"\x01" * int(args[0]), interrupt=watch)
        receive(interrupt=watch)
    elif mode == "die-mid-message":
        # Wait for b"go", then die by SIGKILL right after publishing the second
        # chunk of a many-chunk message: the reader is left holding a partial one.
        receive(interrupt=watch)
        writer = channel.writer
        publish = writer._publish  # noqa: SLF001 - the crash must land at an exact point
        published = 0

        def publish_then_die(chunk, more):
            nonlocal published
            publish(chunk, more)
            published += 1
            if published == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        writer._publish = publish_then_die  # noqa: SLF001
        send(bytes(channel.spec.to_orchestrator.capacity), interrupt=watch)
    elif mode == "block":
        try:
            receive(interrupt=watch)
        except PeerGoneError:
            return 3
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
