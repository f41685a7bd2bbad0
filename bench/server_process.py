"""``mlxtrio serve`` of this checkout as a child process of a benchmark: started on free ports, stopped for sure."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import trio

from ._common import ROOT, checkout_environment

__all__ = ["ServerProcess", "children", "mlxtrio_server", "stop"]


@attrs.frozen
class ServerProcess:
    process: subprocess.Popen
    openai_url: str
    admin_url: str
    log_path: Path


def children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` and their states (``R``, ``S``, ``Z``, ...), from /proc (Linux)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid:
            found[int(entry)] = state
    return found


def stop(process: subprocess.Popen, *, signum: int = signal.SIGTERM, wait: float = 30) -> None:
    """Ask it to stop (gracefully by default), and kill it if it has not within ``wait`` seconds."""
    if process.poll() is None:
        process.send_signal(signum)
    try:
        process.wait(wait)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def mlxtrio_server(cache: Path, **env: str) -> AsyncIterator[ServerProcess]:
    """The demo model's cache in ``cache``, extra environment ``env``; its log in a temporary file."""
    log_path = Path(tempfile.mkstemp(prefix="mlxtrio-bench-", suffix=".log")[1])
    environment = checkout_environment(**{"MLX_CACHE_DIR": str(cache), "MLX_PORT": "0", "MLX_ADMIN_PORT": "0", **env})
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "mlxtrio", "serve"], env=environment, stderr=log, cwd=ROOT)
    try:
        with trio.fail_after(120):
            while not (found := re.search(r"OpenAI API on (\S+), admin API on (\S+)", log_path.read_text())):
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited: {log_path.read_text()}")
                await trio.sleep(0.05)
        yield ServerProcess(process, found.group(1), found.group(2), log_path)
    finally:
        stop(process)
        log_path.unlink()

