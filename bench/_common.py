"""What every harness needs: the checkout it belongs to, an environment that runs that checkout's code, a results file."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["ROOT", "checkout_environment", "write_json"]

# The repository these harnesses are part of.
ROOT = Path(__file__).resolve().parents[1]


def checkout_environment(checkout: Path = ROOT, **extra: str) -> dict[str, str]:
    """This process's environment, ``extra`` on top and ``checkout`` first on ``PYTHONPATH``.

    A child started in it with ``cwd=checkout`` imports that checkout's
    mlxtrio (and bench), not whatever copy is installed; what the caller's
    path holds after it (an offline bundle's site, say) stays reachable.
    """
    environment = {**os.environ, **extra}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
    return environment


def write_json(path: Path, value: object) -> None:
    """``value`` as indented JSON at ``path``, its folder made first (``bench/results/`` need not exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
