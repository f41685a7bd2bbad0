"""The control links between rank 0 and the other ranks: TCP, a length before each frame.

Rank 0 listens on its host and the control port until every other rank has
connected and shown the group's token (a secret the orchestrator made for
this start; a stranger on the network who connects first gets nothing and
keeps no one out), then stops listening. Frames go one way, rank 0 to the
others; a follower reads them with a timeout slice so that it can look
whether its parent is still there. The link is also how a follower learns
that rank 0 is gone: its end closes.
"""

from __future__ import annotations

import hmac
import socket
import struct
import time
from collections.abc import Callable

from ...ipc import PeerGoneError
from ._ops import OPS, Hello, Op

__all__ = ["FollowerLinks", "LeaderLink", "Listener", "connect"]

_LENGTH = struct.Struct(">I")
# Above any frame rank 0 sends (a request is bounded by the server's body limit long before this).
_MOST_BYTES = 1 << 30
# How long a follower may wait for rank 0 to listen, and a connection for its Hello.
CONNECT_WAIT = 60.0
_HELLO_WAIT = 10.0
# A Hello is a rank and a token: a connection that announces more is no rank.
_HELLO_BYTES = 1024
# How often a waiting follower looks whether its parent is still there.
_SLICE = 1.0


def _frame(op: Op) -> bytes:
    payload = OPS.encode(op)
    return _LENGTH.pack(len(payload)) + payload


def _read_exactly(sock: socket.socket, size: int, interrupt: Callable[[], None]) -> bytes:
    chunks, left = [], size
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except TimeoutError:
            interrupt()
            continue
        if not chunk:
            raise PeerGoneError("rank 0 closed the control link")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _give_up() -> None:
    raise TimeoutError("no Hello in time")


def _read_frame(sock: socket.socket, interrupt: Callable[[], None], *, most: int = _MOST_BYTES) -> Op:
    (size,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size, interrupt))
    if size > most:
        raise PeerGoneError(f"a control frame of {size} bytes")
    return OPS.decode(_read_exactly(sock, size, interrupt))


class FollowerLinks:
    """Rank 0's ends of the links, one per other rank."""

    def __init__(self, sockets: dict[int, socket.socket]) -> None:
        self._sockets = sockets

    def send(self, op: Op) -> None:
        """``op`` to every other rank; OSError (BrokenPipeError, ...) where one is gone."""
        frame = _frame(op)
        for sock in self._sockets.values():
            sock.sendall(frame)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()


class Listener:
    """Rank 0's listening socket, open from before the group forms until every other rank has connected."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(16)
        self._socket.settimeout(_SLICE)

    def accept(self, ranks: int, token: str, *, interrupt: Callable[[], None], deadline: float) -> FollowerLinks:
        """A link from each of ranks 1 .. ``ranks - 1``, each checked by its Hello; TimeoutError past ``deadline``."""
        links: dict[int, socket.socket] = {}
        try:
            while len(links) < ranks - 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ranks {sorted(set(range(1, ranks)) - set(links))} did not connect")
                try:
                    sock, _ = self._socket.accept()
                except TimeoutError:
                    interrupt()
                    continue
                hello = self._hello(sock)
                if hello is None or not 0 < hello.rank < ranks or hello.rank in links or not hmac.compare_digest(hello.token, token):
                    sock.close()
                    continue
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                links[hello.rank] = sock
        except BaseException:
            for sock in links.values():
                sock.close()
            raise
        finally:
            self._socket.close()
        return FollowerLinks(links)

    def close(self) -> None:
        self._socket.close()

    @staticmethod
    def _hello(sock: socket.socket) -> Hello | None:
        """The connection's Hello, or None: anything else, or nothing in time, and it is dropped."""
        sock.settimeout(_HELLO_WAIT)
        try:
            op = _read_frame(sock, _give_up, most=_HELLO_BYTES)
        except (OSError, PeerGoneError, ValueError):
            return None
        return op if isinstance(op, Hello) else None


class LeaderLink:
    """A follower's end of its link."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    def receive(self, *, interrupt: Callable[[], None]) -> Op:
        """The next op from rank 0; PeerGoneError once it is gone, or ``interrupt``'s error."""
        try:
            return _read_frame(self._socket, interrupt)
        except ConnectionError as exc:
            raise PeerGoneError(f"the control link to rank 0 broke: {exc}") from exc

    def close(self) -> None:
        self._socket.close()


def connect(host: str, port: int, *, rank: int, token: str, interrupt: Callable[[], None]) -> LeaderLink:
    """A link to rank 0, tried until it listens (at most ``CONNECT_WAIT``), introduced by this rank's Hello."""
    deadline = time.monotonic() + CONNECT_WAIT
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=_SLICE)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            interrupt()
            time.sleep(0.05)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_frame(Hello(rank, token)))
    sock.settimeout(_SLICE)
    return LeaderLink(sock)
