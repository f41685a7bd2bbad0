"""State files (pid file, status snapshot): written atomically, owner-only.

Temporary file in the same directory, fsync, rename over the old one, fsync
the directory: a reader sees the old file or the new one, never half of one,
even across a power cut. The temporary file gets a random name and is created
with ``O_EXCL | O_NOFOLLOW`` at mode 0600, so a name planted in advance (a
symlink, where the state lives in a shared directory such as /tmp) is never
followed nor reused.

The pid file is also the server's lock: it is held with ``flock`` for the
server's life, so a second server given the same pid file refuses to start
instead of overwriting it, and a server removes only the pid file it took.
``flock`` rather than ``lockf``: a ``lockf`` lock is dropped when the process
closes *any* descriptor of the file, a ``flock`` lock only with its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from pathlib import Path

import attrs

__all__ = ["PidFile", "PidFileHeld", "remove_quietly", "take_pid_file", "write_atomically"]


def _write_temporary(path: Path, data: bytes) -> tuple[Path, int]:
    """A new file beside ``path`` holding ``data`` (synced); its name and an open descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # O_CLOEXEC: no worker inherits it (an inherited pid file descriptor would keep its lock).
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(temporary)
        raise
    return temporary, fd


def _move_into_place(temporary: Path, path: Path) -> None:
    try:
        os.replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_atomically(path: Path, data: bytes) -> None:
    temporary, fd = _write_temporary(path, data)
    try:
        _move_into_place(temporary, path)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` (itself, not a symlink's target) is the file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


class PidFileHeld(Exception):
    """Another live process holds the pid file's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = "another running mlxtrio server" + (f" (pid {pid})" if pid is not None else "")
        super().__init__(f"the pid file {path} is held by {holder}: stop it first, or give this one another --pid-file")
        self.path = path
        self.pid = pid


def _recorded_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


@attrs.define(eq=False)
class PidFile:
    """A pid file taken by this process: its lock is held until ``release``."""

    path: Path
    _fd: int | None

    def release(self) -> None:
        """Remove the pid file if it is still the one taken, then let go of its lock."""
        if self._fd is None:
            return
        try:
            # Removed while still locked: a server starting now opens a new file, not this one.
            if _names(self.path, self._fd):
                remove_quietly(self.path)
        finally:
            os.close(self._fd)
            self._fd = None


def take_pid_file(path: Path) -> PidFile:
    """Write this process's pid to ``path`` and hold the file's lock; ``PidFileHeld`` if a live process holds it.

    A pid file left by a process that died (SIGKILL, a power cut) holds no lock
    and is taken over. The lock on the file found at ``path`` serializes servers
    starting at once; the pid is then written to a new file, locked before it is
    renamed into place, so readers only ever see a whole pid.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    while True:
        current = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(current).st_mode):
                raise OSError(f"the pid file {path} is not a regular file")
            try:
                fcntl.flock(current, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PidFileHeld(path, _recorded_pid(current)) from None
            if not _names(path, current):
                continue  # Replaced or removed by its holder before we got the lock: look again.
            temporary, fd = _write_temporary(path, f"{os.getpid()}\n".encode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a file nobody else knows yet
                _move_into_place(temporary, path)
            except BaseException:
                os.close(fd)
                raise
            return PidFile(path, fd)
        finally:
            os.close(current)
