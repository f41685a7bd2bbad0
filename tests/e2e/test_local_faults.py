"""Local users, files and faults (issue 22, items 8-10): what others leave in /dev/shm, a status
snapshot that cannot be written, and the pid file's lock."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from mlxtrio import _server
from mlxtrio._state_files import PidFileHeld, take_pid_file, write_atomically

from ..helpers import LONG_STREAM, bounded, drain, kill_if_running, loaded_entry, server_env, start_server, worker_entry


@pytest.fixture
def server_settings(tmp_path: Path) -> dict:
    return {"state_dir": tmp_path / "state"}


async def _until(condition) -> None:
    """Poll what has no event to wait on (a file another process writes, a background retry)."""
    with trio.fail_after(30):
        while not condition():
            await trio.sleep(0.01)


@bounded(60)
async def test_a_start_survives_what_others_leave_in_dev_shm(cache_dir, tmp_path):
    """A name the sweep cannot remove (here a directory) once made the start exit with status 1."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    planted = Path(f"/dev/shm/mlxtrio{dead.pid}_ab12x")
    planted.mkdir()
    try:
        process, url, _admin_url, log = await start_server(cache_dir, tmp_path)
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                assert (await client.get(url + "/health")).status_code == 200
            process.send_signal(signal.SIGTERM)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, process, log)
                with trio.fail_after(30):
                    assert await process.wait() == 0, b"".join(log).decode()
        finally:
            await kill_if_running(process)
        assert planted.is_dir()
    finally:
        planted.rmdir()


@bounded(120)
async def test_an_unwritable_snapshot_is_logged_once_and_the_server_keeps_serving(
    server, client, admin, tmp_path, monkeypatch, caplog
):
    """status.json replaced by a directory once ended the server, its streams and its worker."""
    path = tmp_path / "state" / "status.json"
    monkeypatch.setattr(_server, "_SNAPSHOT_INTERVAL", 0.02)
    failed: list[OSError] = []

    def counting(target: Path, data: bytes) -> None:
        try:
            write_atomically(target, data)
        except OSError as exc:
            failed.append(exc)
            raise

    monkeypatch.setattr(_server, "write_atomically", counting)
    caplog.set_level(logging.INFO, logger="mlxtrio")
    await _until(path.is_file)
    worker_pid = (await loaded_entry(admin))["pid"]
    # The server may write the file again between the two: replace it until a directory stands there.
    while not path.is_dir():
        path.unlink(missing_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir()
    async with client.stream("POST", "/v1/completions", json={**LONG_STREAM, "max_tokens": 300}) as response:
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: {"):
                break
        # The stream changed the snapshot (a request in flight): several writes fail while it runs.
        await _until(lambda: len(failed) >= 3)
        rest = [line async for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]", rest[-3:]
    assert (await client.get("/health")).status_code == 200
    entry = await worker_entry(admin)
    assert (entry["pid"], entry["state"]) == (worker_pid, "ready")
    warnings = [record for record in caplog.records if "status snapshot" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, [r.getMessage() for r in warnings]

    path.rmdir()
    await _until(path.is_file)
    snapshot = json.loads(path.read_text())
    assert snapshot["pid"] == os.getpid() and snapshot["workers"][0]["active_requests"] == 0
    # Logged just after the write that made the file.
    await _until(lambda: any("status snapshot written again" in record.getMessage() for record in caplog.records))


@bounded(120)
async def test_a_second_server_with_the_same_pid_file_refuses_and_leaves_it(cache_dir, tmp_path):
    """It once overwrote the pid file, failed on the port, and deleted the first server's pid file."""
    pid_file = tmp_path / "run" / "mlxtrio.pid"
    first, url, _admin_url, log = await start_server(cache_dir, tmp_path, "--pid-file", str(pid_file))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, first, log)
            with trio.fail_after(30):
                second = await trio.run_process(
                    [sys.executable, "-m", "mlxtrio", "serve", "--pid-file", str(pid_file), "--port", url.rsplit(":", 1)[1]],
                    env=server_env(cache_dir, tmp_path),
                    capture_stderr=True,
                    check=False,
                )
            assert second.returncode == 1, second.stderr.decode()
            assert f"pid {first.pid}".encode() in second.stderr and b"Traceback" not in second.stderr, second.stderr
            assert b"Address already in use" not in second.stderr  # refused before it bound a port
            assert pid_file.read_text() == f"{first.pid}\n"
            async with httpx.AsyncClient(timeout=60) as client:
                assert (await client.get(url + "/health")).status_code == 200
            first.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await first.wait() == 0, b"".join(log).decode()
        assert not pid_file.exists()
    finally:
        await kill_if_running(first)


def test_temporary_files_are_random_exclusive_and_never_a_planted_symlink(tmp_path):
    """The temporary name was once ``.<name>.<pid>.tmp``, opened with O_TRUNC and following symlinks."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    state = tmp_path / "state"
    state.mkdir()
    for name in ("status.json", "mlxtrio.pid"):
        (state / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    old_umask = os.umask(0)
    try:
        write_atomically(state / "status.json", b"snapshot")
        taken = take_pid_file(state / "mlxtrio.pid")
    finally:
        os.umask(old_umask)
    try:
        assert victim.read_bytes() == b"precious"
        for name, content in (("status.json", b"snapshot"), ("mlxtrio.pid", f"{os.getpid()}\n".encode())):
            assert not (state / name).is_symlink() and (state / name).read_bytes() == content
            assert (state / name).stat().st_mode & 0o777 == 0o600
        assert sorted(path.name for path in state.iterdir() if not path.is_symlink()) == ["mlxtrio.pid", "status.json"]
    finally:
        taken.release()
    assert not (state / "mlxtrio.pid").exists()


def test_the_pid_file_lock(tmp_path):
    pid_file = tmp_path / "mlxtrio.pid"
    # A pid file left by a server that died (SIGKILL, power cut) holds no lock: taken over.
    pid_file.write_text("999999999\n")
    taken = take_pid_file(pid_file)
    try:
        assert pid_file.read_text() == f"{os.getpid()}\n"
        # The lock belongs to the open file, so a second take in this same process is refused too.
        with pytest.raises(PidFileHeld, match=f"pid {os.getpid()}"):
            take_pid_file(pid_file)
        assert pid_file.read_text() == f"{os.getpid()}\n"
    finally:
        taken.release()
    assert not pid_file.exists()
    # A pid file that is not the one taken (replaced behind the server's back) is not deleted.
    taken = take_pid_file(pid_file)
    pid_file.unlink()
    pid_file.write_text("12345\n")
    taken.release()
    assert pid_file.read_text() == "12345\n"
    # A symlink at the pid file's own path is refused, not followed.
    pid_file.unlink()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    pid_file.symlink_to(victim)
    with pytest.raises(OSError):
        take_pid_file(pid_file)
    assert victim.read_text() == "precious"
