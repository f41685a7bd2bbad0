"""The worker's BLAS (MLX_WORKER_BLAS), against the real server and a real worker.

Whether OpenBLAS is installed decides what ``auto`` does, so the default's
test expects what this machine has (the CI machine and a developer's may
differ); the explicit settings behave the same everywhere on Linux.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxtrio.tuning import WorkerBlas, blas_in_use, parse_worker_blas
from mlxtrio.tuning import find_system_library

from ..helpers import bounded, loaded_entry, make_config, worker_maps

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loading another BLAS is Linux-only")


def _harmless_library() -> str:
    """A shared library no worker maps of its own accord, harmless to load: a CPython extension module it never imports."""
    # Distributions split CPython's test modules off; one of these is in every build.
    for name in ("_ctypes_test", "_testbuffer", "xxlimited", "_curses", "_dbm"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".so"):
            return spec.origin
    raise AssertionError("no CPython extension module to load as a stand-in library")


HARMLESS_LIBRARY = _harmless_library() if sys.platform.startswith("linux") else ""


@bounded(120)
async def test_by_default_the_worker_runs_with_openblas_where_the_system_has_it(admin):
    entry = await loaded_entry(admin)
    if find_system_library("openblas") is not None:
        assert entry["blas"] == "openblas"
        assert "libopenblas" in worker_maps(entry["pid"])
    else:
        assert entry["blas"] == "mlx"
        assert "libopenblas" not in worker_maps(entry["pid"])


@pytest.mark.parametrize("server_settings", [{"worker_blas": "mlx"}])
@bounded(120)
async def test_mlx_leaves_the_blas_mlx_was_built_with(admin):
    entry = await loaded_entry(admin)
    assert entry["blas"] == "mlx"
    assert "libopenblas" not in worker_maps(entry["pid"])


@pytest.mark.parametrize("server_settings", [{"worker_blas": HARMLESS_LIBRARY}])
@bounded(120)
async def test_a_path_is_loaded_into_the_worker_as_given(admin):
    entry = await loaded_entry(admin)
    assert HARMLESS_LIBRARY in worker_maps(entry["pid"])
    # It is no BLAS MLX calls: what the worker reports is what its MLX runs with.
    assert entry["blas"] == "mlx"


def _load_in_a_child(library: str, cpus: str, environment: dict[str, str], *, import_mlx_first: bool = False) -> list[str]:
    """load_worker_blas in a fresh process: (OPENBLAS_NUM_THREADS afterwards, whether the library is mapped, stderr)."""
    code = (
        "import os, sys\n"
        + ("import mlx.core\n" if import_mlx_first else "")
        + "from mlxtrio.tuning import load_worker_blas\n"
        f"load_worker_blas({library!r}, cpus={cpus})\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
        f"print({library!r} in open('/proc/self/maps').read())\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], env={"PATH": os.environ.get("PATH", ""), **environment},
        capture_output=True, text=True, timeout=60, check=True,
    )
    return [*child.stdout.split(), child.stderr]


def test_a_pinned_worker_gives_the_blas_one_thread_per_cpu_unless_the_operator_set_a_count():
    assert _load_in_a_child(HARMLESS_LIBRARY, "(3,)", {})[:2] == ["1", "True"]
    assert _load_in_a_child(HARMLESS_LIBRARY, "(2, 3)", {})[:2] == ["2", "True"]
    # Not pinned: the BLAS's own default.
    assert _load_in_a_child(HARMLESS_LIBRARY, "()", {})[:2] == ["None", "True"]
    assert _load_in_a_child(HARMLESS_LIBRARY, "(3,)", {"OPENBLAS_NUM_THREADS": "4"})[:2] == ["4", "True"]
    assert _load_in_a_child(HARMLESS_LIBRARY, "(3,)", {"OMP_NUM_THREADS": "2"})[:2] == ["None", "True"]


def test_too_late_after_mlx_or_unloadable_it_says_so_and_goes_on_with_mlxs():
    threads, mapped, stderr = _load_in_a_child(HARMLESS_LIBRARY, "(3,)", {}, import_mlx_first=True)
    assert (threads, mapped) == ("None", "False")
    assert "MLX was imported before the BLAS" in stderr
    threads, mapped, stderr = _load_in_a_child("/no/such/libopenblas.so.0", "()", {})
    assert mapped == "False"
    assert "could not load the BLAS" in stderr


def test_the_worker_reads_its_blas_from_its_memory_map():
    line = "7f1c2a000000-7f1c2a0a6000 r-xp 00000000 08:01 1234 {}"
    assert blas_in_use(line.format("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so")) == "openblas"
    assert blas_in_use(line.format("/usr/lib/x86_64-linux-gnu/libblis.so.4")) == "blis"
    assert blas_in_use(line.format("/opt/intel/lib/libmkl_rt.so.2")) == "mkl"
    # MLX's own (the wheel's reference BLAS), and numpy's OpenBLAS, whose symbols are prefixed and which MLX never calls.
    bundled = line.format("/venv/lib/python3.11/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0")
    numpys = line.format("/venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-32a4b2a6.so")
    assert blas_in_use(bundled + "\n" + numpys) == "mlx"


def test_settings_resolve_to_the_library_a_worker_loads(tmp_path: Path):
    library = tmp_path / "libopenblas.so.0"
    library.write_bytes(b"")
    assert parse_worker_blas(str(library)) == WorkerBlas("path", str(library))
    assert parse_worker_blas(str(library)).library() == str(library)
    assert parse_worker_blas(" MLX ").library() is None
    assert parse_worker_blas("auto").library() == find_system_library("openblas")


@pytest.mark.parametrize("value", ["", "fast", "libopenblas.so.0", "/no/such/libopenblas.so.0", "/"])
def test_bad_settings_are_refused_at_start(value: str, cache_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="worker_blas"):
        make_config(cache_dir, tmp_path, worker_blas=value)
    with pytest.raises(ValueError, match="worker_blas"):
        parse_worker_blas(value)
