"""mlxtrio: an OpenAI-compatible LLM inference server for MLX on Trio.

The orchestrator (this package minus ``worker``) never imports MLX, and the
worker never imports the orchestrator: ``main`` and ``ServerHandle`` (Trio,
Hypercorn, Quart) load on first use, so a worker process, which imports this
package on its way to ``mlxtrio.worker``, starts without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._config import Config
from ._errors import ErrorKind, ServerError

if TYPE_CHECKING:
    from ._server import ServerHandle, main

__all__ = ["Config", "ErrorKind", "ServerError", "ServerHandle", "main"]
__version__ = "0.1.0"

_FROM_SERVER = frozenset({"ServerHandle", "main"})


def __getattr__(name: str) -> object:
    if name in _FROM_SERVER:
        from . import _server

        return getattr(_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
