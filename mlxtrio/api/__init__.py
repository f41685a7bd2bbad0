"""The HTTP side: the OpenAI API app and the admin API app (Quart-Trio)."""

from ._admin import create_admin_app
from ._common import ServerState
from ._generation import create_openai_app

__all__ = ["ServerState", "create_admin_app", "create_openai_app"]
