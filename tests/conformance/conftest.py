"""One running server for all of the conformance tests, reached through the official ``openai`` client and httpx.

By default one ``python -m mlxtrio serve`` (the demo model, free ports) is started for these tests and
stopped after them. ``MLXTRIO_CONFORMANCE_URL`` (e.g. ``http://127.0.0.1:11440``, without ``/v1``) points the
suite at a server that is already running instead; ``MLXTRIO_CONFORMANCE_MODEL`` names the model to ask for
(default ``demo``) and ``MLXTRIO_CONFORMANCE_API_KEY`` the key to send, if that server needs one.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ..helpers import server_env

# Every request is small (a few tokens of a tiny model): a generous bound still fails a hung server quickly.
REQUEST_TIMEOUT = 60.0


class _Server:
    """``mlxtrio serve`` as a child process whose log is read continuously (a full pipe would block it)."""

    def __init__(self, cache_dir: Path, tmp_path: Path) -> None:
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlxtrio", "serve"],
            env=server_env(cache_dir, tmp_path),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_url(self, timeout: float = 60.0) -> str:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError("the server did not say where it listens:\n" + "".join(self.log)) from None
            if line is None:
                raise AssertionError("the server exited before it listened:\n" + "".join(self.log))
            if match := re.search(r"OpenAI API on (\S+), admin API on (\S+)", line):
                return match.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the server did not stop within 30 s of SIGTERM:\n" + "".join(self.log)) from None


@pytest.fixture(scope="package")
def base_url(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's root URL (no ``/v1``); the model is loaded before the first test runs.

    Package-scoped: the server stops when the last conformance test is done, not at the end of the whole suite.
    """
    if url := os.environ.get("MLXTRIO_CONFORMANCE_URL"):
        yield url.rstrip("/")
        return
    server = _Server(cache_dir, tmp_path_factory.mktemp("conformance"))
    try:
        url = server.wait_for_url()
        # The first request loads the model; later tests then time only their own work.
        response = httpx.post(
            url + "/v1/completions",
            json={"model": _model(), "prompt": "warm up", "max_tokens": 1},
            headers=_headers(),
            timeout=120,
        )
        assert response.status_code == 200, response.text
        yield url
    finally:
        server.stop()
    assert server.process.returncode == 0, "".join(server.log)


def _model() -> str:
    return os.environ.get("MLXTRIO_CONFORMANCE_MODEL", "demo")


def _headers() -> dict[str, str]:
    key = os.environ.get("MLXTRIO_CONFORMANCE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="package")
def model() -> str:
    return _model()


@pytest.fixture(scope="package")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    """The official client, as applications use it; no retries, so an error is seen as the server sent it."""
    with openai.OpenAI(
        base_url=base_url + "/v1",
        api_key=os.environ.get("MLXTRIO_CONFORMANCE_API_KEY", "unused"),
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
    ) as client:
        yield client


@pytest.fixture(scope="package")
def http(base_url: str) -> Iterator[httpx.Client]:
    """Raw HTTP for what the client hides: bodies that are not JSON, status codes, SSE lines."""
    with httpx.Client(base_url=base_url, headers=_headers(), timeout=REQUEST_TIMEOUT) as client:
        yield client
