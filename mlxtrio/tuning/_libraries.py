"""Shared libraries a worker may run with instead of its defaults: finding, naming, recognising them.

A worker's malloc (_allocator.py) and its MLX's BLAS (_blas.py) are each a
setting of the same form: ``auto`` (a faster library where the system has
one, Linux only), a word for the default, or the absolute path of a library
file. What the worker really runs with is read back from its own memory
map, so that ``/admin/status`` says what is, not what was asked.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import attrs

__all__ = ["LibrarySetting", "find_system_library", "library_in_use", "parse_library_setting"]


@functools.cache
def find_system_library(name: str) -> str | None:
    """``lib<name>``'s soname as the dynamic linker finds it, or None (and always None off Linux).

    ldconfig's cache, read by a subprocess: call it before the event loop
    runs (the config does), not inside it; the answer is cached.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes.util  # here: the worker imports these modules, and needs only library_in_use

    return ctypes.util.find_library(name)


@attrs.frozen
class LibrarySetting:
    """A parsed setting of this form; each kind of library a subclass naming what ``auto`` finds."""

    mode: str  # "auto", the default's word, or "path"
    path: str | None = None
    # ``auto``'s library where the system has it: ``lib<AUTO>``.
    AUTO: ClassVar[str]

    def __str__(self) -> str:
        """The setting as it would be written: its mode, or the library's path."""
        return self.path if self.mode == "path" and self.path is not None else self.mode

    def library(self) -> str | None:
        """The library a worker runs with instead of its default, or None for the default."""
        if self.mode == "path":
            return self.path
        if self.mode == "auto":
            return find_system_library(self.AUTO)
        return None


def parse_library_setting(value: str, *, setting: str, default: str) -> tuple[str, str | None]:
    """(``"auto"``, None), (``default``, None) or (``"path"``, the path); ValueError naming ``setting`` otherwise."""
    text = value.strip()
    if text.lower() in {"auto", default}:
        return text.lower(), None
    if not sys.platform.startswith("linux"):
        raise ValueError(f"{setting} may name a library on Linux only; use 'auto' or '{default}', not {value!r}")
    path = Path(text)
    if not path.is_absolute() or not path.is_file():
        raise ValueError(f"{setting} must be 'auto', '{default}' or the absolute path of a library file, not {value!r}")
    return "path", str(path)


def library_in_use(known: Mapping[str, str], *, otherwise: str, maps: str | None = None) -> str:
    """The name in ``known`` (file-name prefix: name) of a library this process maps, else ``otherwise``.

    Read from ``/proc/self/maps`` (or ``maps``, its text); where there is no
    such file (macOS), ``otherwise``. Only file names count: a directory
    that merely mentions a library's name is not that library.
    """
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return otherwise
    for line in maps.splitlines():
        name = os.path.basename(line.rpartition(" ")[2])
        for prefix, known_name in known.items():
            if name.startswith(prefix):
                return known_name
    return otherwise
