"""The command line's own facts: its version, also where mlxtrio runs from a checkout that pip never installed."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import mlxtrio
from mlxtrio import _cli


def test_the_version_needs_no_installed_package(monkeypatch, capsys):
    # A checkout on PYTHONPATH (the benchmark harnesses, the GPU runs) has no package metadata.
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit) as exited:
        _cli._parser().parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"mlxtrio {mlxtrio.__version__}\n"


def test_the_package_says_the_version_pyproject_gives():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert mlxtrio.__version__ == pyproject["project"]["version"]
