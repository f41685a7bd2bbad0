"""``mlxtrio status``: a running server as a person wants to see it, or ``/admin/status`` as it is (``--json``).

It asks the server over HTTP (``/health`` on the OpenAI port, ``/admin/status``
with ``MLX_ADMIN_TOKEN`` on the admin port), with the standard library only:
the daemon script runs it, and it must not need the test extras.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

__all__ = ["report"]

_TIMEOUT = 5.0
# Straight to the server: a proxy from the environment (http_proxy) would stand between us and loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Exit statuses, as the LSB's status actions have them.
_RUNNING, _NOT_RUNNING, _UNKNOWN = 0, 3, 4


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    """The status and body of a GET; OSError if nothing answers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _rank_lines(worker: dict) -> list[str]:
    """A worker group's ranks, one line each: where, which process, what it holds."""
    lines = []
    for rank in worker.get("ranks") or ():
        details = [f"rank {rank['rank']} on {rank['host']}", f"pid {rank['pid']}", rank["state"]]
        if rank.get("memory_bytes") is not None:
            details.append(f"{rank['memory_bytes'] / 2**20:.1f} MiB")
        if rank.get("shard"):
            details.append(rank["shard"])
        lines.append("        " + ", ".join(details))
    return lines


def _model_line(worker: dict, width: int, now: float) -> str:
    """One model: its state, then what a person checks about it."""
    state, details = worker["state"], []
    if state in ("ready", "loading") and worker.get("pid") is not None:
        details.append(f"worker pid {worker['pid']}")
    if state == "ready":
        if worker.get("memory_bytes") is not None:
            details.append(f"{worker['memory_bytes'] / 2**20:.1f} MiB")
        active, queued = worker.get("active_requests", 0), worker.get("queued_requests", 0)
        details.append(f"{active} requests in flight" + (f" ({queued} waiting)" if queued else ""))
        if not active and worker.get("last_used_at") is not None:
            details.append(f"idle {_duration(now - worker['last_used_at'])}")
        if worker.get("cpus"):
            details.append(f"pinned to CPU {','.join(map(str, worker['cpus']))}")
    if state == "failed":
        state = f"failed: {worker.get('failure')}"
        if worker.get("retry_at") is not None:
            details.append(f"next try in {_duration(worker['retry_at'] - now)}")
    if worker.get("restarts"):
        details.append(f"{worker['restarts']} restarts (last: {worker.get('last_crash')})")
    return f"    {worker['model']:<{width}}  {', '.join([state, *details])}"


def _summary(status: dict | None, *, health: str, admin_problem: str | None, url: str, admin_url: str, now: float) -> str:
    if status is None:
        lines = ["mlxtrio is running"]
    else:
        doing = "shutting down" if status.get("shutting_down") else "running"
        lines = [f"mlxtrio is {doing} (pid {status.get('pid')}, up {_duration(now - status['started_at'])})"]
    lines.append(f"  OpenAI API  {url}  (health: {health})")
    lines.append(f"  admin API   {admin_url}")
    if status is None:
        lines.append(f"  models: unknown, {admin_problem}")
    else:
        workers = status.get("workers", [])
        width = max((len(worker["model"]) for worker in workers), default=0)
        lines.append("  models:" if workers else "  models: none")
        for worker in workers:
            lines.append(_model_line(worker, width, now))
            lines.extend(_rank_lines(worker))
    return "\n".join(lines)


def report(*, url: str, admin_url: str, as_json: bool) -> int:
    """Print the server's status; 0 if it answers, 3 if nothing answers at ``url``, 4 if ``--json`` gets no status."""
    token = os.environ.get("MLX_ADMIN_TOKEN") or None
    try:
        health_status, health_body = _get(url + "/health")
    except OSError as exc:
        print(f"mlxtrio is not running at {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr if as_json else sys.stdout)
        return _NOT_RUNNING
    try:
        health = json.loads(health_body)["status"]
    except (ValueError, KeyError, TypeError):
        health = f"HTTP {health_status}"
    admin_body, admin_problem = b"", None
    try:
        admin_status, admin_body = _get(admin_url + "/admin/status", token)
    except OSError as exc:
        admin_problem = f"the admin API does not answer ({getattr(exc, 'reason', exc)})"
    else:
        if admin_status == 401:
            admin_problem = f"the admin API {'refused the token in' if token else 'wants its token: set'} MLX_ADMIN_TOKEN"
        elif admin_status != 200:
            admin_problem = f"the admin API answered HTTP {admin_status}"
    if as_json:
        if admin_problem is not None:
            print(f"mlxtrio status: {admin_problem}", file=sys.stderr)
            return _UNKNOWN
        print(admin_body.decode())
        return _RUNNING
    status = json.loads(admin_body) if admin_problem is None else None
    print(_summary(status, health=health, admin_problem=admin_problem, url=url, admin_url=admin_url, now=time.time()))
    return _RUNNING
