"""The ring protocol, with both ends in this process (cross-process tests are elsewhere)."""

from __future__ import annotations

import os
import stat
import struct
import sys
import threading

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxtrio.ipc import (
    MAX_NAME_LENGTH,
    Channel,
    Codec,
    FrameTooLargeError,
    ProtocolError,
    RingMemory,
    RingReader,
    RingTimeoutError,
    RingWriter,
    list_objects,
    sweep_stale_objects,
)
from mlxtrio.ipc._names import new_base_name

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inspects /dev/shm (Linux only)")


@pytest.fixture
def pair():
    """A channel's two ends, both in this process: (orchestrator end, worker end)."""
    orchestrator = Channel.create(capacity=256)
    worker = Channel.attach(orchestrator.spec)
    orchestrator.unlink()
    yield orchestrator, worker
    worker.close()
    orchestrator.close()


def _all_names(channel: Channel) -> list[str]:
    names = []
    for ring in (channel.spec.to_worker, channel.spec.to_orchestrator):
        names += [ring.memory_name, ring.frames_name, ring.slots_name]
    return names


def test_names_fit_macos_limit():
    channel = Channel.create(capacity=1024)
    try:
        for name in _all_names(channel):
            assert name.startswith("/mlxtrio")
            assert len(name) <= MAX_NAME_LENGTH, name
    finally:
        channel.unlink()
        channel.close()


@linux_only
def test_objects_are_owner_only_and_unlink_removes_them():
    old_umask = os.umask(0)  # mode must come from the code, not from a lucky umask
    try:
        channel = Channel.create(capacity=1024)
    finally:
        os.umask(old_umask)
    try:
        entries = [
            name[1:] if name.endswith("m") else "sem." + name[1:] for name in _all_names(channel)
        ]
        for entry in entries:
            mode = stat.S_IMODE(os.stat(f"/dev/shm/{entry}").st_mode)
            assert mode == 0o600, (entry, oct(mode))
        channel.unlink()
        for entry in entries:
            assert not os.path.exists(f"/dev/shm/{entry}")
    finally:
        channel.unlink()
        channel.close()


def _advance_to(writer: RingWriter, reader: RingReader, capacity: int, target: int) -> None:
    """Move both ends' offset to ``target`` with single-chunk filler messages."""
    limit = capacity // 4
    while (gap := (target - writer._offset) % capacity) != 0:  # noqa: SLF001 - exact positioning
        filler = b"f" * (gap - 4 if 4 <= gap <= 4 + limit else limit)
        writer.send(filler, timeout=1)
        assert reader.receive(timeout=1) == filler


@pytest.mark.parametrize("size", [0, 1, 3, 5, 63, 64, 200])
def test_wraparound_at_every_offset(pair, size):
    orchestrator, worker = pair
    capacity = orchestrator.spec.to_worker.capacity
    for offset in range(capacity):
        _advance_to(orchestrator.writer, worker.reader, capacity, offset)
        payload = bytes((offset + i) % 251 for i in range(size))
        orchestrator.writer.send(payload, timeout=1)
        assert worker.reader.receive(timeout=1) == payload


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.binary(max_size=900), max_size=40), capacity=st.sampled_from([64, 100, 256, 1024]))
def test_random_messages_arrive_whole_and_in_order(messages, capacity):
    sender = Channel.create(capacity=capacity)
    receiver = Channel.attach(sender.spec)
    sender.unlink()
    received = []
    try:
        thread = threading.Thread(
            target=lambda: received.extend(receiver.reader.receive(timeout=5) for _ in messages)
        )
        thread.start()
        for message in messages:
            sender.writer.send(message, timeout=5)
        thread.join(10)
        assert received == messages
    finally:
        receiver.close()
        sender.close()


def test_one_mebibyte_message_crosses_a_small_ring():
    sender = Channel.create(capacity=64 * 1024)
    receiver = Channel.attach(sender.spec)
    sender.unlink()
    big = os.urandom(1024 * 1024)
    result = []
    try:
        thread = threading.Thread(target=lambda: result.append(receiver.reader.receive(timeout=10)))
        thread.start()
        sender.writer.send(big, timeout=10)
        thread.join(10)
        assert result == [big]
        assert sender.writer.statistics().chunks == 64  # 1 MiB in quarter-ring chunks
    finally:
        receiver.close()
        sender.close()


def test_try_send_publishes_all_or_nothing(pair):
    orchestrator, worker = pair
    assert orchestrator.writer.try_send(b"a" * 150)
    # 154 of 256 bytes used: a two-chunk message of 200 bytes does not fit now.
    assert not orchestrator.writer.try_send(b"b" * 200)
    assert worker.reader.receive(timeout=0) == b"a" * 150
    assert worker.reader.receive(timeout=0) is None  # nothing of the refused message leaked
    assert orchestrator.writer.try_send(b"b" * 200)
    assert worker.reader.receive(timeout=0) == b"b" * 200


def test_full_ring_waits_then_times_out_and_recovers(pair):
    orchestrator, worker = pair
    while orchestrator.writer.try_send(b"x" * 60):
        pass
    with pytest.raises(RingTimeoutError):
        orchestrator.writer.send(b"y" * 60, timeout=0.1)
    # A timeout before anything was published leaves the ring usable.
    while worker.reader.receive(timeout=0) is not None:
        pass
    orchestrator.writer.send(b"z", timeout=1)
    assert worker.reader.receive(timeout=1) == b"z"


def test_message_over_the_limit_is_refused_with_the_limit_named():
    sender = Channel.create(capacity=4096, max_message_size=1000)
    receiver = Channel.attach(sender.spec)
    sender.unlink()
    try:
        with pytest.raises(FrameTooLargeError, match="1000"):
            sender.writer.send(b"x" * 1001)
        assert receiver.reader.receive(timeout=0) is None
        sender.writer.send(b"x" * 1000, timeout=1)
    finally:
        receiver.close()
        sender.close()


def test_corrupt_chunk_header_raises_protocol_error(pair):
    orchestrator, worker = pair
    memory = orchestrator._memories[0]  # noqa: SLF001 - forging a bad frame
    memory.put(0, struct.pack("<I", 10_000))
    memory.frames.release()
    with pytest.raises(ProtocolError, match="corrupt chunk header"):
        worker.reader.receive(timeout=1)


def test_attach_checks_the_header():
    memory = RingMemory.create(new_base_name() + "x", capacity=128)
    try:
        wrong = msgspec.structs.replace(memory.spec, capacity=256)
        with pytest.raises(ProtocolError, match="header"):
            RingMemory.attach(wrong)
    finally:
        memory.unlink()
        memory.close()


class Ping(msgspec.Struct, tag="ping", array_like=True):
    sequence: int


class Text(msgspec.Struct, tag="text", array_like=True):
    sequence: int
    text: str


def test_codec_round_trip_and_rejects_unknown_or_corrupt():
    codec: Codec[Ping | Text] = Codec(Ping | Text)
    for message in (Ping(1), Text(2, "héllo")):
        assert codec.decode(codec.encode(message)) == message
    other = Codec(Ping)
    with pytest.raises(ProtocolError):
        other.decode(codec.encode(Text(3, "not a ping")))
    with pytest.raises(ProtocolError):
        codec.decode(b"\xc1\xff\x00garbage")
    with pytest.raises(ProtocolError):
        codec.decode(b"")


@linux_only
def test_sweep_removes_objects_of_dead_creators_only():
    import subprocess

    # A process that creates a channel and dies without unlinking it.
    script = "import os\nfrom mlxtrio.ipc import Channel\nChannel.create(capacity=128)\nprint(os.getpid())"
    dead_pid = int(subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout)
    stale_entries = {found.entry for found in list_objects() if found.creator_pid == dead_pid}
    live = Channel.create(capacity=128)
    try:
        assert len(stale_entries) == 6  # two rings, each a memory object and two semaphores
        removed = sweep_stale_objects()
        assert stale_entries <= set(removed)
        assert not any(entry.startswith(f"mlxtrio{os.getpid()}_") for entry in removed)
        assert os.path.exists("/dev/shm/" + live.spec.to_worker.memory_name[1:])
    finally:
        live.unlink()
        live.close()
