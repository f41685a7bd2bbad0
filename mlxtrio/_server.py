"""The server's root: one nursery holding the two HTTP servers, the supervisor and the signal task.

``main(config, *, task_status)`` can run inside a test's nursery: it reports
the bound addresses through ``task_status`` and returns when stopped.

Stopping (SIGTERM, SIGINT, or ``ServerHandle.shutdown()``): /health turns 503,
both servers stop accepting and give in-flight requests ``grace_period``
seconds; those still running then are ended by the server (503
``shutting_down``: a response, or a stream's last event; ``api._in_flight``),
then every worker is stopped (Shutdown, a bounded wait, SIGKILL) and every
shared-memory object is gone. A second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
from functools import partial
from pathlib import Path

import attrs
import hypercorn.config
import msgspec
import trio

from . import _http
from ._config import Config, is_loopback
from ._metrics import Metrics
from ._state_files import PidFile, remove_quietly, take_pid_file, write_atomically
from .api import ServerState, create_admin_app, create_api_app
from .ipc import sweep_stale_objects
from .orchestrator import ModelCatalog, Supervisor

__all__ = ["ServerHandle", "main"]

log = logging.getLogger("mlxtrio")
# How long stopping the workers may take before the root is cancelled (which SIGKILLs them).
_WORKER_STOP_LIMIT = 10.0
_SNAPSHOT_INTERVAL = 1.0
# How long requests cut at the end of the grace period have to send their
# last words (an error event, a 503) before Hypercorn cancels what is left.
_LAST_WORDS_LIMIT = 5.0


@attrs.define(eq=False)
class ServerHandle:
    """What ``main`` reports once both servers listen."""

    openai_url: str
    admin_url: str
    state: ServerState
    _stop: trio.Event

    def shutdown(self) -> None:
        """Begin a graceful stop, as SIGTERM would."""
        self.state.shutting_down = True
        self._stop.set()


def _errors_only(record: logging.LogRecord) -> bool:
    """Hypercorn's info lines are its "Running on" banners, which repeat our own "API on" line."""
    return record.levelno >= logging.WARNING


def _hypercorn_config(host: str, port: int, grace_period: float) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # The server cuts requests at grace_period itself (_cut_at_grace_period); this is the backstop.
    config.graceful_timeout = grace_period + _LAST_WORDS_LIMIT
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.errorlog.addFilter(_errors_only)  # once: a logger keeps one of each filter
    return config


async def _cut_at_grace_period(state: ServerState, stop: trio.Event, grace_period: float) -> None:
    """A graceful stop: says what it waits for, and ends what still runs past the grace period."""
    await stop.wait()
    log.info("stopping: waiting up to %g s for %d requests in flight", grace_period, state.in_flight.count)
    await trio.sleep(grace_period)
    if state.in_flight.count:
        log.warning(
            "the grace period (%g s) is over: ending the %d requests still in flight (503 shutting_down)",
            grace_period,
            state.in_flight.count,
        )
        state.in_flight.cut()


async def _watch_signals(
    listening: list[ServerHandle],
    root: trio.CancelScope,
    forced: list[bool],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGTERM and SIGINT, from before the pid file is written: graceful once ``listening`` holds the handle."""
    # trio.open_signal_receiver rides on Trio's wakeup fd: no work in a signal handler.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # Started once the handlers are in: a SIGTERM sent as soon as the pid
        # file exists, or the server says it listens, must stop it cleanly,
        # not kill it outright.
        task_status.started()
        async for signum in signals:
            if not listening:
                # Nothing is served yet: stop starting.
                log.info("%s during start-up: stopping", signal.Signals(signum).name)
                root.cancel()
                return
            handle = listening[0]
            if not handle.state.shutting_down:
                log.info("%s: stopping gracefully (send it again to stop at once)", signal.Signals(signum).name)
                handle.shutdown()
            else:
                # Asked for, not a fault: the requests still in flight are cut, the workers killed.
                log.info(
                    "%s again: stopping now (%d requests in flight cut, model workers killed)",
                    signal.Signals(signum).name,
                    handle.state.in_flight.count,
                )
                forced.append(True)
                root.cancel()
                return


async def _write_snapshots(config: Config, state: ServerState) -> None:
    assert config.state_dir is not None
    path = config.state_dir / "status.json"
    try:
        await _write_each_change(path, state)
    finally:
        # Gone with the server, like its pid file: a status.json left would pass a dead server off as live.
        _remove_own_snapshot(path)


def _remove_own_snapshot(path: Path) -> None:
    try:
        recorded = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return
    if isinstance(recorded, dict) and recorded.get("pid") == os.getpid():
        remove_quietly(path)


async def _write_each_change(path: Path, state: ServerState) -> None:
    last = b""
    failing = False
    while True:
        snapshot = msgspec.json.encode(
            # Written when it changes: the models' states, not the traffic through their channels.
            {"pid": os.getpid(), "shutting_down": state.shutting_down, "workers": state.supervisor.describe(ipc=False)}
        )
        if snapshot != last:
            try:
                await trio.to_thread.run_sync(write_atomically, path, snapshot)
            except OSError as exc:
                # A full disk, or status.json replaced by a directory, must not stop the server:
                # said once per streak of failures, tried again every tick.
                if not failing:
                    log.warning(
                        "cannot write the status snapshot %s (trying again every %g s): %s", path, _SNAPSHOT_INTERVAL, exc
                    )
                failing = True
            else:
                if failing:
                    log.info("status snapshot written again to %s", path)
                failing = False
                last = snapshot
        await trio.sleep(_SNAPSHOT_INTERVAL)


async def main(
    config: Config,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the server until stopped. Returns the process exit status (0: graceful)."""
    swept = sweep_stale_objects()
    if swept:
        log.info("removed %d shared-memory objects left by dead mlxtrio processes", len(swept))
    if not is_loopback(config.host) and not config.api_keys:
        log.warning("the OpenAI API listens on %s with no API key: anyone who can reach it can use it", config.host)
    catalog = ModelCatalog(config)
    catalog.log_configured()
    supervisor = Supervisor(config, catalog)
    state = ServerState(config, supervisor, Metrics(supervisor.statistics))
    stop = trio.Event()
    forced: list[bool] = []
    listening: list[ServerHandle] = []
    pid_file: PidFile | None = None
    try:
        async with trio.open_nursery() as root:
            if handle_signals:
                await root.start(_watch_signals, listening, root.cancel_scope, forced)
            if config.pid_file is not None:
                # Held until the server exits; raises PidFileHeld while another server holds it.
                pid_file = take_pid_file(config.pid_file)
            await root.start(supervisor.run)
            async with trio.open_nursery() as http:
                openai_binds, admin_binds = [
                    await http.start(
                        partial(
                            _http.serve,
                            app,
                            _hypercorn_config(host, port, config.grace_period),
                            shutdown_trigger=stop.wait,
                        )
                    )
                    for app, host, port in (
                        (create_api_app(state), config.host, config.port),
                        (create_admin_app(state), config.admin_host, config.admin_port),
                    )
                ]
                handle = ServerHandle(openai_binds[0], admin_binds[0], state, stop)
                listening.append(handle)
                root.start_soon(_cut_at_grace_period, state, stop, config.grace_period)
                if config.state_dir is not None:
                    root.start_soon(_write_snapshots, config, state)
                log.info("OpenAI API on %s, admin API on %s", handle.openai_url, handle.admin_url)
                task_status.started(handle)
            # Both servers have drained (or hit their grace period).
            log.info("HTTP servers stopped; stopping workers")
            with trio.move_on_after(_WORKER_STOP_LIMIT):
                await supervisor.unload_all()
            root.cancel_scope.cancel()
    finally:
        if pid_file is not None:
            pid_file.release()
    return 1 if forced else 0
