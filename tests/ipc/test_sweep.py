"""The start-up sweep of /dev/shm never stops a server: what it cannot or must not remove, it skips.

Any local user can create files in /dev/shm, including ones named like
mlxtrio's objects (issue 22, item 8). The tests run as root, who may remove
anything, so a failing removal is made with a directory, a file given to
another user, a symlink, and a refusal at the OS boundary.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from mlxtrio.ipc import sweep_stale_objects

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inspects /dev/shm (Linux only)")

NOBODY = 65534


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_sweep_skips_what_it_cannot_or_must_not_remove(tmp_path, monkeypatch, caplog):
    base = f"/dev/shm/mlxtrio{_dead_pid()}_"
    stale, directory, foreign, link, refused = (base + f"a{n}x" for n in range(5))
    victim = tmp_path / "victim"
    victim.write_text("keep")
    try:
        for path in (stale, foreign, refused):
            with open(path, "x"):
                pass
        os.chown(foreign, NOBODY, NOBODY)
        os.mkdir(directory)
        os.symlink(victim, link)
        real_unlink = os.unlink

        def unlink(path, *args, **kwargs):
            # What a non-owner meets in the sticky /dev/shm.
            if os.fspath(path).endswith(os.path.basename(refused)):
                raise PermissionError(1, "Operation not permitted", path)
            return real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "unlink", unlink)
        with caplog.at_level(logging.DEBUG, logger="mlxtrio"):
            removed = [entry for entry in sweep_stale_objects() if entry.startswith(os.path.basename(base))]
        monkeypatch.undo()
        assert removed == [os.path.basename(stale)]
        assert not os.path.lexists(stale)
        assert os.path.isdir(directory) and os.path.islink(link) and os.path.isfile(foreign) and os.path.isfile(refused)
        assert victim.read_text() == "keep"
        logged = caplog.text
        for path in (directory, foreign, link, refused):
            assert os.path.basename(path) in logged, logged
    finally:
        monkeypatch.undo()
        for path in (stale, foreign, link, refused):
            if os.path.lexists(path):
                os.unlink(path)
        if os.path.isdir(directory):
            os.rmdir(directory)
