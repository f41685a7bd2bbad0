"""The worker's malloc (MLX_WORKER_ALLOCATOR), against the real server and a real worker.

Whether jemalloc is installed decides what ``auto`` does, so the default's
test expects what this machine has (the CI machine and a developer's may
differ); the explicit settings behave the same everywhere on Linux.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mlxtrio.tuning import WorkerAllocator, allocator_in_use, parse_worker_allocator
from mlxtrio.tuning import find_system_library

from ..helpers import bounded, loaded_entry, make_config, worker_maps

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preloading a malloc is Linux-only")


def _preloaded(pid: int) -> list[str]:
    """The LD_PRELOAD the process started with (its initial environment), split."""
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [entry[len(b"LD_PRELOAD=") :].decode() for entry in variables if entry.startswith(b"LD_PRELOAD=")]
    return found[0].split() if found else []


def _c_library() -> str:
    """This process's C library, a harmless library to preload (every Python process maps it anyway)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.rpartition(" ")[2]
        if Path(path).name.startswith("libc.so"):
            return path
    raise AssertionError("no C library in this process's memory map")


C_LIBRARY = _c_library() if sys.platform.startswith("linux") else ""


@bounded(120)
async def test_by_default_the_worker_runs_with_jemalloc_where_the_system_has_it(admin):
    orchestrators_preload = os.environ.get("LD_PRELOAD")
    entry = await loaded_entry(admin)
    jemalloc = find_system_library("jemalloc")
    if jemalloc is not None:
        assert entry["allocator"] == "jemalloc"
        assert _preloaded(entry["pid"])[0] == jemalloc
        assert "libjemalloc" in worker_maps(entry["pid"])
    else:
        assert entry["allocator"] == "system"
        assert "libjemalloc" not in worker_maps(entry["pid"])
    # Only the worker's environment changes: the orchestrator's own is left as it was.
    assert os.environ.get("LD_PRELOAD") == orchestrators_preload


@pytest.mark.parametrize("server_settings", [{"worker_allocator": "system"}])
@bounded(120)
async def test_system_leaves_the_c_librarys_malloc(admin):
    entry = await loaded_entry(admin)
    assert entry["allocator"] == "system"
    assert "libjemalloc" not in worker_maps(entry["pid"])


@pytest.mark.parametrize("server_settings", [{"worker_allocator": C_LIBRARY}])
@bounded(120)
async def test_a_path_is_preloaded_into_the_worker_as_given(admin):
    entry = await loaded_entry(admin)
    assert _preloaded(entry["pid"])[0] == C_LIBRARY
    # The C library is no malloc of another kind: what the worker reports is what it runs with.
    assert entry["allocator"] == "system"


def test_the_worker_reads_its_malloc_from_its_memory_map():
    line = "7f1c2a000000-7f1c2a0a6000 r-xp 00000000 08:01 1234 {}"
    assert allocator_in_use(line.format("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")) == "jemalloc"
    assert allocator_in_use(line.format("/opt/lib/libtcmalloc_minimal.so.4")) == "tcmalloc"
    assert allocator_in_use(line.format("/usr/lib/libmimalloc.so.2.1")) == "mimalloc"
    assert allocator_in_use(line.format("/usr/lib/x86_64-linux-gnu/libc.so.6") + "\n" + line.format("[heap]")) == "system"
    # A path that merely mentions a malloc's name in a directory is not that malloc.
    assert allocator_in_use(line.format("/home/jemalloc-notes/libfoo.so")) == "system"


def test_the_environment_keeps_an_existing_preload_after_the_allocator(tmp_path: Path):
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    allocator = parse_worker_allocator(str(library))
    assert allocator == WorkerAllocator("path", str(library))
    assert allocator.environment({"PATH": "/bin"}) == {"PATH": "/bin", "LD_PRELOAD": str(library)}
    assert allocator.environment({"LD_PRELOAD": "/opt/libprofiler.so"})["LD_PRELOAD"] == f"{library} /opt/libprofiler.so"
    # Already preloaded by the operator: the environment is left as it is.
    assert allocator.environment({"LD_PRELOAD": str(library)}) is None
    assert parse_worker_allocator(" System ").environment({"PATH": "/bin"}) is None


@pytest.mark.parametrize("value", ["", "fast", "libjemalloc.so.2", "/no/such/libjemalloc.so.2", "/"])
def test_bad_settings_are_refused_at_start(value: str, cache_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="worker_allocator"):
        make_config(cache_dir, tmp_path, worker_allocator=value)
    with pytest.raises(ValueError, match="worker_allocator"):
        parse_worker_allocator(value)
