"""The OpenAI Responses API surface: /v1/responses, its stream events and its stored conversations.

``_router`` holds the routes, ``_schemas`` the request bodies and their
checks, ``_items`` the input items (as stored and listed, and as the chat
template's messages), ``_serving`` the translation of a request into a
``GenerationRequest``, ``_answer`` the Response object and its stream
events, and ``_store`` (with ``_sqlite``, its database file) the stored
responses (``store``, ``previous_response_id``, the GET/DELETE endpoints)
in SQLite under the state directory.
"""

from .._surface import Surface
from ._errors import responses_error
from ._router import GENERATION_PATHS, PATH_PREFIXES, responses_routes

__all__ = ["SURFACE"]

SURFACE = Surface(
    name="responses", routes=responses_routes, generation_paths=GENERATION_PATHS, error_body=responses_error, path_prefixes=PATH_PREFIXES
)
