"""bin/mlxtrio-daemon: start, status, stop, restart, and the pid it will and won't signal."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
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
    state = tmp_path / "state"
    started = await _daemon(env, "start")
    assert started.returncode == 0, started.stderr
    pid = int((state / "mlxtrio.pid").read_text())
    assert f"pid {pid}" in started.stdout.decode()
    try:
        again = await _daemon(env, "start")
        assert b"already running" in again.stdout
        url, admin_url = re.search(rb"OpenAI API on (\S+), admin API on (\S+);", started.stdout).groups()
        url, admin_url = url.decode(), admin_url.decode()
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": "Bearer key-1"}) as client:
            response = await client.post(url + "/v1/completions", json={"model": "demo", "prompt": "hi", "max_tokens": 3})
            assert response.status_code == 200

        # A summary for a person: a few lines, one per model, no JSON.
        status = await _daemon(env, "status")
        assert status.returncode == 0, status.stderr
        text = status.stdout.decode()
        assert re.match(rf"mlxtrio is running \(pid {pid}, up \d+ s\)\n", text), text
        assert re.search(rf"^  OpenAI API +{re.escape(url)} +\(health: ok\)$", text, re.MULTILINE), text
        assert re.search(rf"^  admin API +{re.escape(admin_url)}$", text, re.MULTILINE), text
        # The script passes MLX_ADMIN_TOKEN on: the admin API answered with each model's state.
        assert re.search(
            r"^    demo +ready, worker pid \d+, \d+\.\d MiB, 0 requests in flight, idle \d+ s", text, re.MULTILINE
        ), text
        assert "{" not in text and len(text.splitlines()) <= 8, text
        # Without the admin token the summary says what it lacks.
        tokenless = await _daemon({**env, "MLX_ADMIN_TOKEN": ""}, "status")
        assert tokenless.returncode == 0 and b"health: ok" in tokenless.stdout
        assert b"set MLX_ADMIN_TOKEN" in tokenless.stdout, tokenless.stdout
        # --json: /admin/status as it is, and nothing else.
        raw = await _daemon(env, "status", "--json")
        assert raw.returncode == 0, raw.stderr
        document = json.loads(raw.stdout)
        assert document["pid"] == pid and [worker["model"] for worker in document["workers"]] == ["demo"]

        # The state files are the owner's alone.
        assert oct(state.stat().st_mode & 0o777) == oct(0o700)
        for name in ("mlxtrio.pid", "status.json", "mlxtrio.log"):
            assert oct((state / name).stat().st_mode & 0o777) == oct(0o600), name

        stopped = await _daemon(env, "stop")
        assert stopped.returncode == 0 and b"mlxtrio stopped" in stopped.stdout
        assert not Path(f"/proc/{pid}").exists()
        # A clean stop leaves no state that could pass for a live server's.
        assert not (state / "mlxtrio.pid").exists()
        assert not (state / "status.json").exists()
        after = await _daemon(env, "status")
        assert after.returncode == 3 and after.stdout == b"mlxtrio is not running\n", after.stdout
        logs = await _daemon(env, "logs")
        assert b"stopping gracefully" in logs.stdout
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, 9)


async def _kill_and_wait(pid: int) -> None:
    """SIGKILL a process that is not our child, and wait for it to be gone."""
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


@bounded(120)
async def test_after_a_crash_status_says_the_recorded_pid_is_dead(cache_dir, tmp_path):
    env = _env(cache_dir, tmp_path)
    state = tmp_path / "state"
    assert (await _daemon(env, "start")).returncode == 0
    pid = int((state / "mlxtrio.pid").read_text())
    pids = [pid]
    try:
        await _kill_and_wait(pid)
        # Not the stale state printed as if live: the recorded pid is dead, and the LSB status for that.
        status = await _daemon(env, "status")
        assert status.returncode == 1, status.stdout
        text = status.stdout.decode()
        assert text.startswith("mlxtrio is not running") and f"pid {pid}" in text and "dead" in text, text
        assert "health" not in text and "ready" not in text, text
        raw = await _daemon(env, "status", "--json")
        assert raw.returncode == 1 and raw.stdout == b"" and f"pid {pid}".encode() in raw.stderr

        # start takes the stale files over; the new server is the one reported.
        assert (await _daemon(env, "start")).returncode == 0
        pids.append(int((state / "mlxtrio.pid").read_text()))
        assert pids[1] != pid
        assert re.match(rf"mlxtrio is running \(pid {pids[1]},", (await _daemon(env, "status")).stdout.decode())
        assert (await _daemon(env, "stop")).returncode == 0
        assert (await _daemon(env, "status")).returncode == 3
    finally:
        for each in pids:
            if Path(f"/proc/{each}").exists():
                os.kill(each, 9)


@bounded(60)
async def test_stop_clears_the_state_a_crash_left(cache_dir, tmp_path):
    env = _env(cache_dir, tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "mlxtrio.pid").write_text("999999999\n")
    (state / "status.json").write_text('{"pid":999999999,"shutting_down":false,"workers":[]}')
    assert (await _daemon(env, "status")).returncode == 1
    stopped = await _daemon(env, "stop")
    assert stopped.returncode == 0 and b"not running" in stopped.stdout
    assert not (state / "mlxtrio.pid").exists() and not (state / "status.json").exists()
    assert (await _daemon(env, "status")).returncode == 3


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


async def test_status_says_when_nothing_answers(tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: nothing answers there
        result = await trio.run_process(
            [sys.executable, "-m", "mlxtrio", "status", "--url", f"http://127.0.0.1:{port}"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 3 and result.stdout.startswith(f"mlxtrio is not running at http://127.0.0.1:{port}".encode())
