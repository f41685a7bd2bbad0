"""Suite-wide guards: nothing of ours may be left in /dev/shm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlxtrio.ipc import list_objects
from mlxtrio.ipc._names import pid_alive


def leftover_shared_objects() -> list[str]:
    """mlxtrio objects created by this test process, or by any process now dead."""
    return [
        found.entry
        for found in list_objects()
        if found.creator_pid == os.getpid() or not pid_alive(found.creator_pid)
    ]


@pytest.fixture(scope="session", autouse=True)
def no_leftover_shared_memory():
    before = set(leftover_shared_objects())
    yield
    left = sorted(set(leftover_shared_objects()) - before)
    assert not left, f"the test suite left shared-memory objects behind: {left}"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: the demo model is built once."""
    return tmp_path_factory.mktemp("mlxtrio-cache")
