"""Names of the shared-memory objects, and the sweep of stale ones.

A name is ``/mlxtrio<pid>_<random><suffix>``: short enough for macOS (which
refuses POSIX IPC names longer than 31 bytes including the slash), unique per
server instance, and carrying the creator's pid so that a later server can tell
whether the objects it finds belong to a process that is still alive.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import sys

import attrs

__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_PREFIX",
    "SharedObject",
    "list_objects",
    "new_base_name",
    "pid_alive",
    "sweep_stale_objects",
]

log = logging.getLogger("mlxtrio.ipc")

NAME_PREFIX = "mlxtrio"
# macOS: PSHMNAMLEN is 31 bytes including the leading slash; keep a margin.
MAX_NAME_LENGTH = 30
# Linux keeps shared memory and named semaphores ("sem." + name) in /dev/shm.
_SHM_DIR = "/dev/shm"
_OBJECT_RE = re.compile(rf"^(sem\.)?({NAME_PREFIX}(\d+)_[0-9a-f]+[a-z]*)$")


def new_base_name() -> str:
    """A fresh base name of this process's; callers append a short suffix of lowercase letters."""
    name = f"/{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    # Leave room for a three-letter suffix (ring + object kind).
    assert len(name) + 3 <= MAX_NAME_LENGTH, name
    return name


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Alive, but someone else's.
        return True
    return True


@attrs.frozen
class SharedObject:
    """One mlxtrio object as listed in /dev/shm."""

    entry: str  # the file name in /dev/shm
    name: str  # the POSIX name, with its slash
    is_semaphore: bool
    creator_pid: int


def list_objects(*, shm_dir: str = _SHM_DIR) -> list[SharedObject]:
    """Every mlxtrio object visible in ``shm_dir`` (Linux); empty where IPC objects cannot be listed."""
    if not sys.platform.startswith("linux") or not os.path.isdir(shm_dir):
        return []
    found = []
    for entry in sorted(os.listdir(shm_dir)):
        match = _OBJECT_RE.match(entry)
        if match is not None:
            found.append(SharedObject(entry, "/" + match.group(2), bool(match.group(1)), int(match.group(3))))
    return found


def sweep_stale_objects(*, shm_dir: str = _SHM_DIR) -> list[str]:
    """Unlink the objects of mlxtrio instances whose creating process is dead.

    Objects are normally unlinked as soon as both sides have attached, so this
    only finds the leftovers of a process killed in the few milliseconds between
    creating a channel and its worker attaching. Returns the entries removed.

    Any local user can create entries in /dev/shm, named like ours or not, so
    only regular files of this user are removed, never through a symlink, and
    what cannot be listed, inspected or removed is logged and skipped: a
    stranger's file must not stop a server from starting.

    macOS has no directory listing of POSIX IPC objects, so there this is a
    no-op; the immediate unlink is what keeps the system clean there.
    """
    try:
        objects = list_objects(shm_dir=shm_dir)
    except OSError as exc:
        log.info("not sweeping %s: %s", shm_dir, exc)
        return []
    removed = []
    for found in objects:
        if pid_alive(found.creator_pid):
            continue
        path = os.path.join(shm_dir, found.entry)
        try:
            # lstat: a symlink is judged as itself, never by what it points to.
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                log.debug("sweep: leaving %s (not a regular file of this user)", path)
                continue
            # unlink never follows a symlink either.
            os.unlink(path)
        except FileNotFoundError:
            continue  # Someone else swept it first.
        except OSError as exc:
            log.info("sweep: cannot remove %s: %s", path, exc)
            continue
        removed.append(found.entry)
    return removed
