"""The HTTP side: the API app, one folder per API surface (``openai/``), and the admin app (Quart-Trio)."""

from ._admin import create_admin_app
from ._app import create_api_app
from ._common import ServerState

__all__ = ["ServerState", "create_admin_app", "create_api_app"]
