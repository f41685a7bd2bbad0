"""The OpenAI Responses API surface: /v1/responses, its stream events and its stored conversations.

``_router`` holds the routes, ``_schemas`` the request bodies and their
checks, ``_items`` the input items (as stored and listed, and as the chat
template's messages), ``_serving`` the translation of a request into a
``GenerationRequest``, ``_answer`` the Response object and its stream
events, and ``_store`` (with ``_sqlite``, its database file) the stored
responses (``store``, ``previous_response_id``, the GET/DELETE endpoints)
in SQLite under the state directory.
"""

from ..._errors import ServerError
from .._errors import openai_error
from .._surface import Surface
from ._router import GENERATION_PATHS, PATH_PREFIXES, responses_routes

__all__ = ["SURFACE"]

# The worker names the prompt by the chat request's field (a prompt over the context, a template's refusal): here it is the input.
_PROMPT_PARAMS = frozenset({"messages", "prompt"})


def _responses_error(error: ServerError) -> dict:
    body = openai_error(error)
    if error.param in _PROMPT_PARAMS:
        body["error"]["param"] = "input"
    return body


SURFACE = Surface(
    name="responses", routes=responses_routes, generation_paths=GENERATION_PATHS, error_body=_responses_error, path_prefixes=PATH_PREFIXES
)
