"""mlxtrio: an OpenAI-compatible LLM inference server for MLX on Trio.

The orchestrator (this package minus ``worker``) never imports MLX.
"""

from ._config import Config
from ._errors import ServerError
from ._server import ServerHandle, main

__all__ = ["Config", "ServerError", "ServerHandle", "main"]
__version__ = "0.1.0"
