"""bin/mlxtrio-daemon: start, status, stop, restart, and the pid it will and won't signal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from ..helpers import bounded

DAEMON = Path(__file__).resolve().parents[2] / "bin" / "mlxtrio-daemon"


def _env(cache_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLXTRIO_STATE_DIR": str(tmp_path / "state"),
        "MLXTRIO_BIN": f"{sys.executable} -m mlxtrio",
        "MLX_CACHE_DIR": str(cache_dir),
        "MLX_PORT": "0",
        "MLX_ADMIN_PORT": "0",
    }


async def _daemon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return await trio.run_process([str(DAEMON), *args], env=env, capture_stdout=True, capture_stderr=True, check=False)


@bounded(120)
async def test_start_status_request_stop(cache_dir, tmp_path):
    env = {**_env(cache_dir, tmp_path), "MLX_ADMIN_TOKEN": "admin-secret", "MLX_API_KEY": "key-1"}
    started = await _daemon(env, "start")
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "state" / "mlxtrio.pid").read_text())
    assert f"pid {pid}" in started.stdout.decode()
    try:
        again = await _daemon(env, "start")
        assert b"already running" in again.stdout
        status = await _daemon(env, "status")
        assert status.returncode == 0
        assert b'health: {"status":"ok"}' in status.stdout
        # The script passes MLX_ADMIN_TOKEN on: the admin API answered with the status.
        assert b'status: {"started_at"' in status.stdout, status.stdout
        url = re.search(rb"OpenAI API on (\S+),", status.stdout).group(1).decode()
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": "Bearer key-1"}) as client:
            response = await client.post(url + "/v1/completions", json={"model": "demo", "prompt": "hi", "max_tokens": 3})
            assert response.status_code == 200
        stopped = await _daemon(env, "stop")
        assert stopped.returncode == 0 and b"mlxtrio stopped" in stopped.stdout
        assert not Path(f"/proc/{pid}").exists()
        assert not (tmp_path / "state" / "mlxtrio.pid").exists()
        assert (await _daemon(env, "status")).returncode == 3
        logs = await _daemon(env, "logs")
        assert b"stopping gracefully" in logs.stdout
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, 9)


@bounded(60)
async def test_stop_never_signals_a_pid_that_is_not_mlxtrio(cache_dir, tmp_path):
    env = _env(cache_dir, tmp_path)
    bystander = await trio.lowlevel.open_process(["sleep", "60"])
    try:
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "mlxtrio.pid").write_text(f"{bystander.pid}\n")
        stopped = await _daemon(env, "stop")
        assert stopped.returncode == 0 and b"not running" in stopped.stdout
        assert bystander.returncode is None and bystander.poll() is None
    finally:
        bystander.kill()
        await bystander.wait()
