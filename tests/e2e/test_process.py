"""``mlxtrio serve`` as a real process: signals, exit status, pid file, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

from mlxtrio import main
from mlxtrio.ipc import list_objects

from ..helpers import LONG_STREAM, bounded, drain, kill_if_running, make_config, server_env, start_server

async def _signal_mid_stream(
    process: trio.Process, url: str, log: list[bytes], deliver: Callable[[httpx.AsyncClient], Awaitable[None]]
) -> tuple[list[str], int]:
    """Stream a long request, ``deliver`` a signal after its first event, read the stream out, wait for the exit."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, process, log)
        async with httpx.AsyncClient(timeout=60) as client:
            async with client.stream("POST", url + "/v1/completions", json=LONG_STREAM) as response:
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("data: {"):
                        break
                await deliver(client)
                rest = [line async for line in lines if line.startswith("data: ")]
        with trio.fail_after(30):
            status = await process.wait()
    return rest, status


@bounded(120)
async def test_sigterm_lets_the_request_in_flight_finish_then_exits_clean(cache_dir, tmp_path):
    pid_file = tmp_path / "state" / "mlxtrio.pid"
    process, url, admin_url, log = await start_server(
        cache_dir, tmp_path, "--pid-file", str(pid_file), "--state-dir", str(tmp_path / "state")
    )
    try:
        assert pid_file.read_text().strip() == str(process.pid)
        assert oct(pid_file.stat().st_mode & 0o777) == oct(0o600)
        worker_pids, snapshots = [], []

        async def sigterm(client: httpx.AsyncClient) -> None:
            worker_pids.append((await client.get(admin_url + "/admin/status")).json()["workers"][0]["pid"])
            # The snapshot is refreshed within a second of a change: the worker may have started since the last one.
            with trio.move_on_after(5):
                while True:
                    snapshot = json.loads((tmp_path / "state" / "status.json").read_text())
                    if [entry["pid"] for entry in snapshot["workers"]] == worker_pids:
                        break
                    await trio.sleep(0.05)
            snapshots.append(snapshot)
            process.send_signal(signal.SIGTERM)

        rest, status = await _signal_mid_stream(process, url, log, sigterm)
        worker_pid = worker_pids[0]
        assert rest[-1] == "data: [DONE]", rest[-3:]
        assert json.loads(rest[-2][len("data: ") :])["choices"][0]["finish_reason"] == "length"
        assert status == 0, b"".join(log).decode()
        assert not pid_file.exists()
        assert not [found for found in list_objects() if found.creator_pid == process.pid]
        assert worker_pid is not None and not Path(f"/proc/{worker_pid}").exists()
        assert snapshots[0]["pid"] == process.pid and snapshots[0]["workers"][0]["pid"] == worker_pid
        # Removed with the pid file: what is left after a clean stop cannot pass for a live server.
        assert not (tmp_path / "state" / "status.json").exists()
    finally:
        await kill_if_running(process)


@bounded(120)
async def test_a_second_signal_stops_at_once(cache_dir, tmp_path):
    process, url, _admin_url, log = await start_server(cache_dir, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, process, log)
            async with httpx.AsyncClient(timeout=60) as client:
                async with client.stream("POST", url + "/v1/completions", json=LONG_STREAM) as response:
                    lines = response.aiter_lines()  # held: a dropped iterator is finalized, closing the stream
                    async for line in lines:
                        if line.startswith("data: {"):
                            break
                    process.send_signal(signal.SIGTERM)
                    with trio.fail_after(10):
                        while b"stopping gracefully" not in b"".join(log):
                            await trio.sleep(0.01)
                    process.send_signal(signal.SIGTERM)
                    with trio.fail_after(10):
                        status = await process.wait()
        assert status == 1, b"".join(log).decode()
        lines = b"".join(log).decode().splitlines()
        assert any(" INFO mlxtrio: SIGTERM again: stopping now" in line for line in lines), lines
        # Asked for: said plainly, not warned about as if the worker had died on its own.
        assert not [line for line in lines if " WARNING " in line and "worker" in line], lines
        assert any(
            " INFO mlxtrio.orchestrator: " in line and "stopped at once" in line and "worker pid" in line for line in lines
        ), lines
        assert not [found for found in list_objects() if found.creator_pid == process.pid]
    finally:
        await kill_if_running(process)


@bounded(120)
async def test_ctrl_c_to_the_terminal_reaches_the_orchestrator_only(cache_dir, tmp_path):
    """A terminal's Ctrl-C signals its whole process group; the worker has its own session."""
    process, url, _admin_url, log = await start_server(cache_dir, tmp_path, own_session=True)
    try:
        async def ctrl_c(client: httpx.AsyncClient) -> None:
            os.killpg(process.pid, signal.SIGINT)

        rest, status = await _signal_mid_stream(process, url, log, ctrl_c)
        # Had the worker got the SIGINT too, the stream would have ended in an error.
        assert rest[-1] == "data: [DONE]", rest[-3:]
        assert status == 0, b"".join(log).decode()
    finally:
        await kill_if_running(process)


async def _python_passes(code: str) -> None:
    """Run ``code`` in a fresh interpreter (nothing imported yet); its asserts must hold."""
    result = await trio.run_process([sys.executable, "-c", code], capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()


@bounded(60)
async def test_orchestrator_never_imports_mlx():
    code = (
        "import sys, mlxtrio, mlxtrio._cli, mlxtrio._server, mlxtrio.api, mlxtrio.orchestrator\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'mlx', 'mlx_lm', 'transformers'})\n"
        "assert not heavy, heavy"
    )
    await _python_passes(code)


@bounded(60)
async def test_the_worker_imports_no_mlx_before_it_has_loaded_its_blas():
    """The worker loads its BLAS (and a group's rank picks its GPU) before MLX comes in: importing its
    modules must not bring MLX, mlx-lm or transformers."""
    code = (
        "import sys, mlxtrio.worker._main, mlxtrio.worker._group\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'mlx', 'mlx_lm', 'transformers'})\n"
        "assert not heavy, heavy"
    )
    await _python_passes(code)


@bounded(60)
async def test_signals_are_handled_before_the_server_says_it_listens(nursery, cache_dir, tmp_path):
    """A SIGTERM that comes right after "OpenAI API on ..." (a supervisor stopping what it just
    started) must stop the server gracefully: its handlers are in before main() reports started.
    They were once only scheduled to go in, and such a SIGTERM killed the process outright."""
    handled_when_started: list[bool] = []

    class Watching:
        def __init__(self, inner: trio.TaskStatus) -> None:
            self._inner = inner

        def started(self, value: object = None) -> None:
            handled_when_started.append(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)
            self._inner.started(value)

    done = trio.Event()

    async def run(task_status: trio.TaskStatus) -> None:
        try:
            await main(make_config(cache_dir, tmp_path), handle_signals=True, task_status=Watching(task_status))
        finally:
            done.set()

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    handle = await nursery.start(run)
    try:
        assert handled_when_started == [True]
    finally:
        handle.shutdown()
        with trio.fail_after(30):
            await done.wait()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # and out again once it stopped


@bounded(60)
async def test_a_sigterm_as_soon_as_the_pid_file_exists_stops_the_server_cleanly(cache_dir, tmp_path):
    """Whoever reads the pid file (a supervisor, a stop script) may signal at once, before the
    server listens: the handlers are in before the pid file is written, so it stops cleanly."""
    pid_file = tmp_path / "mlxtrio.pid"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "mlxtrio", "serve", "--pid-file", str(pid_file)], env=server_env(cache_dir, tmp_path), stderr=-1
    )
    log: list[bytes] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, process, log)
            with trio.fail_after(30):
                while not (pid_file.exists() and pid_file.read_text().strip()):
                    await trio.sleep(0.001)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0, b"".join(log).decode()
    finally:
        await kill_if_running(process)
    assert not pid_file.exists()


@bounded(60)
async def test_the_worker_never_imports_the_orchestrator():
    """What ``python -m mlxtrio.worker`` loads, before its model and after: none of the orchestrator's
    modules, nor its HTTP stack or metrics (Trio itself comes in with huggingface_hub's HTTP client)."""
    code = (
        "import sys\n"
        "import mlxtrio.worker._main\n"
        "before = len(sys.modules)\n"
        "import mlxtrio.worker._engine\n"
        "server = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'quart', 'quart_trio', 'hypercorn', 'werkzeug', 'prometheus_client'} "
        "or m.startswith(('mlxtrio._server', 'mlxtrio.api', 'mlxtrio.orchestrator', 'mlxtrio.ipc._trio', 'mlxtrio.ipc._router')))\n"
        "assert not server, server\n"
        "assert before < 300, before"
    )
    await _python_passes(code)


@bounded(60)
async def test_cli_says_plainly_what_is_wrong(tmp_path):
    bad = await trio.run_process(
        [sys.executable, "-m", "mlxtrio", "serve"], env={**os.environ, "MLX_PORT": "abc"}, capture_stderr=True, check=False
    )
    assert bad.returncode == 2 and b"invalid setting" in bad.stderr and b"Traceback" not in bad.stderr
    # Which variable, and what it was (issue 24, item 15).
    assert b"MLX_PORT='abc'" in bad.stderr, bad.stderr.decode()
    level = await trio.run_process(
        [sys.executable, "-m", "mlxtrio", "serve", "--log-level", "foo"], capture_stderr=True, check=False
    )
    assert level.returncode == 2 and b"invalid choice: 'FOO'" in level.stderr, level.stderr.decode()
    version = await trio.run_process([sys.executable, "-m", "mlxtrio", "--version"], capture_stdout=True, check=False)
    assert version.returncode == 0 and re.fullmatch(rb"mlxtrio \d+\.\d+\S*\n", version.stdout), version.stdout
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = await trio.run_process(
            [sys.executable, "-m", "mlxtrio", "serve", "--port", str(port), "--admin-port", "0"],
            env={**os.environ, "MLX_CACHE_DIR": str(tmp_path)},
            capture_stderr=True,
            check=False,
        )
    assert busy.returncode == 1 and b"Address already in use" in busy.stderr, busy.stderr.decode()
    assert f"127.0.0.1:{port}".encode() in busy.stderr, busy.stderr.decode()
    assert b"Traceback" not in busy.stderr


@bounded(120)
async def test_orchestrator_sigkill_the_worker_exits_and_the_next_start_sweeps(cache_dir, tmp_path):
    first, _url, admin_url, _log = await start_server(cache_dir, tmp_path)
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            worker_pid = (await client.post(admin_url + "/admin/load", json={"model": "demo"})).json()["pid"]
        # The worker is not our child: a pidfd tells us when it exits.
        exited = os.pidfd_open(worker_pid)
        try:
            first.kill()
            killed_at = trio.current_time()
            with trio.fail_after(1):
                await trio.lowlevel.wait_readable(exited)
            assert trio.current_time() - killed_at < 1.0
        finally:
            os.close(exited)
    finally:
        await kill_if_running(first)

    # What a server killed while it held shared memory (before its worker said Hello) leaves behind.
    code = (
        "import os, signal\nfrom mlxtrio.ipc import Channel\nChannel.create()\n"
        "print(os.getpid(), flush=True)\nos.kill(os.getpid(), signal.SIGKILL)"
    )
    dead = await trio.run_process([sys.executable, "-c", code], capture_stdout=True, check=False)
    assert dead.returncode == -signal.SIGKILL
    dead_pid = int(dead.stdout)
    assert [found for found in list_objects() if found.creator_pid == dead_pid]

    second, _url, _admin_url, log = await start_server(cache_dir, tmp_path)
    try:
        assert not [found for found in list_objects() if found.creator_pid in (dead_pid, first.pid)]
        assert b"shared-memory objects left by dead mlxtrio processes" in b"".join(log), b"".join(log).decode()
    finally:
        second.send_signal(signal.SIGTERM)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, second, log)
            with trio.fail_after(30):
                assert await second.wait() == 0


@bounded(60)
async def test_sigterm_does_not_wait_for_idle_keep_alive_connections(cache_dir, tmp_path):
    """Clients keep connections open between requests (SDK pools, load balancers): a graceful
    stop closes the idle ones at once instead of waiting out the grace period for them."""
    process, url, admin_url, log = await start_server(cache_dir, tmp_path)  # grace period: 30 s, the default
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, process, log)
            async with httpx.AsyncClient(timeout=60) as client:
                for target in (url + "/v1/models", url + "/v1/completions", admin_url + "/admin/status"):
                    if target.endswith("completions"):
                        async with client.stream("POST", target, json={**LONG_STREAM, "max_tokens": 4}) as response:
                            assert [line async for line in response.aiter_lines()][-2] == "data: [DONE]"
                    else:
                        assert (await client.get(target)).status_code == 200
                # Three idle keep-alive connections: two on the OpenAI port, one on the admin port.
                started = trio.current_time()
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(10):
                    status = await process.wait()
                assert status == 0, b"".join(log).decode()
                assert trio.current_time() - started < 10
    finally:
        await kill_if_running(process)


@bounded(60)
async def test_an_idle_keep_alive_connection_is_closed_by_the_server(cache_dir, tmp_path):
    """Idle connections do not pile up: after a response, the server closes the connection
    once it has been idle for Hypercorn's keep-alive timeout (5 s)."""
    process, url, _admin_url, log = await start_server(cache_dir, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, process, log)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some():
                    received += chunk
            # Reaching here means the server closed the connection (end of file) within 10 s.
            assert received.startswith(b"HTTP/1.1 200"), received[:200]
            await stream.aclose()
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await process.wait() == 0, b"".join(log).decode()
    finally:
        await kill_if_running(process)
