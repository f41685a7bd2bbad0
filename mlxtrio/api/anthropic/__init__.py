"""Anthropic's Messages API surface: POST /v1/messages and /v1/messages/count_tokens.

``_router`` holds the routes, ``_schemas`` the request bodies and their
checks, ``_serving`` the translation of a request into one
``GenerationRequest``, ``_answer`` the Message and its stream events, and
``_errors`` Anthropic's error body.
"""

from .._surface import Surface
from ._errors import anthropic_error
from ._router import GENERATION_PATHS, PREFIX, anthropic_routes

__all__ = ["SURFACE"]

SURFACE = Surface(
    name="anthropic", routes=anthropic_routes, generation_paths=GENERATION_PATHS, error_body=anthropic_error, path_prefixes=(PREFIX,)
)
