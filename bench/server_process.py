"""``mlxtrio serve`` as a child process of a benchmark: started on free ports, stopped for sure."""

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

ROOT = Path(__file__).resolve().parents[1]


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
async def mlxtrio_server(cache: Path, *, command: list[str] | None = None, **env: str) -> AsyncIterator[ServerProcess]:
    """The demo model's cache in ``cache``, extra environment ``env``; its log in a temporary file.

    ``command`` replaces ``python -m mlxtrio serve`` (a launcher that instruments the server, say).
    """
    log_path = Path(tempfile.mkstemp(prefix="mlxtrio-bench-", suffix=".log")[1])
    environment = {**os.environ, "MLX_CACHE_DIR": str(cache), "MLX_PORT": "0", "MLX_ADMIN_PORT": "0", **env}
    # This checkout first, and whatever the caller's path holds after it (an offline bundle's site, say).
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command or [sys.executable, "-m", "mlxtrio", "serve"], env=environment, stderr=log, cwd=ROOT)
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


def serve_with_worker_launcher(launcher: str, argv: list[str]) -> int:
    """``mlxtrio serve`` (in this process) whose workers start as ``python LAUNCHER --worker CONFIG SPEC``.

    For benchmarks that instrument or vary the worker: ``launcher``'s
    ``--worker`` changes what it measures, then runs mlxtrio's worker main.
    """
    import trio

    from mlxtrio import _cli

    open_process = trio.lowlevel.open_process

    async def open_worker(command, **kwargs):  # noqa: ANN001, ANN003, ANN202
        # [python, -m, mlxtrio.worker, config, spec] -> [python, launcher, --worker, config, spec]
        if command[1:3] == ["-m", "mlxtrio.worker"]:
            command = [command[0], launcher, "--worker", *command[3:]]
        return await open_process(command, **kwargs)

    trio.lowlevel.open_process = open_worker  # the orchestrator looks it up at each start
    return _cli.main(["serve", *argv])
