"""A worker group's rank in orchestrator tests, without MLX: a real process that keeps the seam's promises, and no more.

python fake_rank.py leader CONFIG_JSON CHANNEL_SPEC
    Rank 0: attaches, sends Hello, waits for every other rank on the control port (each shows the group's
    token, as rank 0 finds it in its environment; a wrong one: exit 9), sends Ready with their
    RankInfo; answers Ping; on Shutdown closes the control links (the followers' stop) and exits 0. A
    follower's exit does not end it: the orchestrator must.
python fake_rank.py follower MODE RANK CONFIG_JSON
    Rank R: connects to rank 0's control port and says its rank, pid and token (from its environment, else its
    standard input's first line, as over ssh). MODE "obey": exits 0 when the link
    closes. "stubborn": ignores SIGTERM and the link's end, and stays until killed (at most a minute).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import msgspec

from mlxtrio import _protocol as p
from mlxtrio.ipc import Channel, ChannelSpec, PeerGoneError, parent_watch
from mlxtrio._protocol import GROUP_TOKEN_VARIABLE as TOKEN_VARIABLE


def _leader(config: p.WorkerConfig, spec: str) -> int:
    group = config.group
    assert group is not None
    channel = Channel.attach(ChannelSpec.from_json(spec))
    watch = parent_watch()

    def send(message: p.ToOrchestrator) -> None:
        channel.writer.send(p.TO_ORCHESTRATOR.encode(message), interrupt=watch)

    send(p.Hello(os.getpid()))
    listener = socket.create_server((group.hosts[0], group.control_port))
    listener.settimeout(30)
    links, ranks = [], [p.RankInfo(0, group.hosts[0], os.getpid(), 1000, "layers 1-1 of 2")]
    for _ in group.hosts[1:]:
        link, _ = listener.accept()
        rank, pid, token = link.makefile().readline().split()
        if token != os.environ[TOKEN_VARIABLE]:
            print(f"rank {rank} showed a wrong token", file=sys.stderr)
            return 9
        rank, pid = int(rank), int(pid)
        links.append(link)
        ranks.append(p.RankInfo(rank, group.hosts[rank], pid, 1000 * (rank + 1), f"layers 0-0 of {len(group.hosts)}"))
    ranks.sort(key=lambda info: info.rank)
    send(p.Ready(config.model_id, 0.01, sum(rank.memory_bytes for rank in ranks), ranks=tuple(ranks)))
    try:
        while True:
            message = p.TO_WORKER.decode(channel.reader.receive(interrupt=watch))
            if isinstance(message, p.Ping):
                send(p.Pong(message.nonce, 0))
            elif isinstance(message, p.Shutdown):
                for link in links:
                    link.close()
                return 0
    except PeerGoneError:
        return 0


def _follower(mode: str, rank: int, config: p.WorkerConfig) -> int:
    group = config.group
    assert group is not None
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline = time.monotonic() + 30
    while True:
        try:
            link = socket.create_connection((group.hosts[0], group.control_port))
            break
        except OSError:
            if time.monotonic() > deadline:
                return 1
            time.sleep(0.02)
    token = os.environ.pop(TOKEN_VARIABLE, None) or sys.stdin.readline().strip()
    link.sendall(f"{rank} {os.getpid()} {token}\n".encode())
    link.recv(1)  # until rank 0 closes the link
    if mode == "stubborn":
        time.sleep(60)
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "leader":
        return _leader(msgspec.json.decode(argv[1], type=p.WorkerConfig), argv[2])
    return _follower(argv[1], int(argv[2]), msgspec.json.decode(argv[3], type=p.WorkerConfig))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
